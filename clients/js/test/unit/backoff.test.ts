import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { backoffCeiling, backoffDelay } from '../../src/backoff.js';
import { FakeWebSocket } from './fakes.js';
import { makeClient, record } from './helpers.js';

describe('backoff', () => {
  it('ceiling doubles from base up to cap', () => {
    expect([0, 1, 2, 3, 4, 5, 6].map((a) => backoffCeiling(a, 100, 2000))).toEqual([100, 200, 400, 800, 1600, 2000, 2000]);
    expect(backoffCeiling(10_000, 100, 2000)).toBe(2000);
  });

  it('full jitter stays within [0, ceiling) for the whole range of random()', () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = backoffCeiling(attempt, 250, 10_000);
      expect(backoffDelay(attempt, 250, 10_000, () => 0)).toBe(0);
      expect(backoffDelay(attempt, 250, 10_000, () => 0.999999)).toBeLessThan(ceiling);
      for (let i = 0; i < 200; i++) {
        const d = backoffDelay(attempt, 250, 10_000);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThan(ceiling);
      }
    }
  });

  it('a floor fraction keeps the delay in [floor * ceiling, ceiling)', () => {
    expect(backoffDelay(3, 100, 10_000, () => 0, 0.5)).toBe(400);
    expect(backoffDelay(3, 100, 10_000, () => 0.999, 0.5)).toBeLessThan(800);
  });
});

describe('reconnect schedule', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('waits min(cap, base*2^n) * random between attempts, and resets after a welcome', () => {
    const client = makeClient({ reconnect: { baseMs: 100, capMs: 1000 }, random: () => 0.5 });
    const log = record(client, ['reconnecting']);
    const expected = [50, 100, 200, 400, 500, 500];
    for (const delay of expected) {
      const n = FakeWebSocket.instances.length;
      FakeWebSocket.last().serverClose(1006);
      expect(client.state).toBe('reconnecting');
      vi.advanceTimersByTime(delay - 1);
      expect(FakeWebSocket.instances.length).toBe(n);
      vi.advanceTimersByTime(1);
      expect(FakeWebSocket.instances.length).toBe(n + 1);
      expect(client.state).toBe('connecting');
    }
    expect(log.map((e) => e[1].delayMs)).toEqual(expected);
    expect(log.map((e) => e[1].attempt)).toEqual([1, 2, 3, 4, 5, 6]);

    FakeWebSocket.last().welcome();
    expect(client.state).toBe('connected');
    FakeWebSocket.last().serverClose(1001, 'draining');
    expect(log[log.length - 1]![1]).toMatchObject({ attempt: 1, delayMs: 50, code: 1001 });
    client.disconnect();
  });

  it('jitter uses the random source: every delay is within the bounds', () => {
    let r = 0;
    const randoms = [0, 0.999, 0.3, 0.7, 0.1, 0.9, 0.5, 0.01];
    const client = makeClient({ reconnect: { baseMs: 200, capMs: 3000 }, random: () => randoms[r++ % randoms.length]! });
    const log = record(client, ['reconnecting']);
    for (let i = 0; i < randoms.length; i++) {
      FakeWebSocket.last().serverClose(1006);
      vi.runOnlyPendingTimers();
    }
    log.forEach((e, i) => {
      const ceiling = Math.min(3000, 200 * 2 ** i);
      expect(e[1].delayMs).toBeGreaterThanOrEqual(0);
      expect(e[1].delayMs).toBeLessThan(ceiling);
      expect(e[1].delayMs).toBe(Math.floor(randoms[i]! * ceiling));
    });
    client.disconnect();
  });

  it('gives up after maxAttempts and reports closed', () => {
    const client = makeClient({ reconnect: { baseMs: 10, capMs: 100, maxAttempts: 3 } });
    const log = record(client, ['reconnecting', 'closed', 'state']);
    for (let i = 0; i < 4; i++) {
      FakeWebSocket.last().serverClose(1006);
      vi.runOnlyPendingTimers();
    }
    expect(log.filter((e) => e[0] === 'reconnecting')).toHaveLength(3);
    expect(log.filter((e) => e[0] === 'closed')).toEqual([['closed', { code: 1006, reason: 'connection lost' }]]);
    expect(client.state).toBe('closed');
    expect(FakeWebSocket.instances).toHaveLength(4);
  });

  it('does not hammer after 4029, 1008 and 1013: at least half of the 4th step ceiling', () => {
    for (const code of [4029, 1008, 1013]) {
      const client = makeClient({ reconnect: { baseMs: 100, capMs: 30_000 }, random: () => 0 });
      const log = record(client, ['reconnecting']);
      FakeWebSocket.last().welcome();
      FakeWebSocket.last().serverClose(code);
      expect(log[0]![1].delayMs).toBe(400); // ceiling 800 at attempt 3, floor half of it
      client.disconnect();
    }
  });

  it('reconnects at once-ish after 4008 and 1001 (plain backoff from the first step)', () => {
    for (const code of [4008, 1001]) {
      const client = makeClient({ reconnect: { baseMs: 100, capMs: 30_000 }, random: () => 0.5 });
      const log = record(client, ['reconnecting', 'disconnected']);
      FakeWebSocket.last().welcome();
      FakeWebSocket.last().serverClose(code);
      expect(log[0]).toEqual(['disconnected', { code, reason: expect.any(String), willReconnect: true }]);
      expect(log[1]![1].delayMs).toBe(50);
      client.disconnect();
    }
  });

  it('reconnect: false gives up on the first close', () => {
    const client = makeClient({ reconnect: false });
    FakeWebSocket.last().welcome();
    FakeWebSocket.last().serverClose(1001);
    expect(client.state).toBe('closed');
  });

  it('emits the connection states in order', () => {
    const client = makeClient({ reconnect: { baseMs: 10, capMs: 10 } });
    const log = record(client, ['state']);
    FakeWebSocket.last().welcome();
    FakeWebSocket.last().serverClose(1006);
    vi.runOnlyPendingTimers();
    FakeWebSocket.last().welcome();
    client.disconnect();
    expect(log.map((e) => e[1])).toEqual(['connected', 'reconnecting', 'connecting', 'connected', 'disconnected']);
  });
});
