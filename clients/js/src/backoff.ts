export interface BackoffOptions {
  /** First delay ceiling in ms (default 500). */
  baseMs?: number;
  /** Largest delay ceiling in ms (default 30 000). */
  capMs?: number;
  /** Consecutive failed attempts before giving up (default Infinity). */
  maxAttempts?: number;
}

/** The ceiling of the delay before attempt `attempt` (0-based): min(cap, base * 2^attempt). */
export function backoffCeiling(attempt: number, baseMs: number, capMs: number): number {
  return Math.min(capMs, baseMs * 2 ** Math.min(attempt, 52));
}

/**
 * Exponential backoff with full jitter: a uniformly random delay in [0, min(cap, base * 2^attempt)).
 * With `floorFraction` > 0 the delay is never below that fraction of the ceiling
 * (used after throttling close codes, so that clients do not hammer a server that asked them to slow down).
 */
export function backoffDelay(
  attempt: number,
  baseMs: number,
  capMs: number,
  random: () => number = Math.random,
  floorFraction = 0,
): number {
  const ceiling = backoffCeiling(attempt, baseMs, capMs);
  const floor = ceiling * floorFraction;
  return Math.floor(floor + random() * (ceiling - floor));
}
