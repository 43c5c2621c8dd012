// What the integration tests share: the nodes they run against (test/e2e/mock-node.mjs,
// started once per test file, and a real node too when ROOMCAST_TEST_URL is set), a
// promise with a deadline, and fresh room names.
import { afterAll, beforeAll } from 'vitest';
// @ts-expect-error: a plain ES module without types
import { startMockNode } from '../e2e/mock-node.mjs';

/** `[name, url]` pairs for `describe.each`; the url is read once the mock node listens. */
export type Target = [string, () => string];

/** Starts the mock node before the file's tests and stops it after them. */
export function targets(): Target[] {
  let mock: { port: number; close(): void } | undefined;
  beforeAll(async () => {
    mock = await startMockNode(0);
  });
  afterAll(() => mock?.close());
  const list: Target[] = [['mock node', () => `ws://127.0.0.1:${mock?.port}/ws`]];
  if (process.env.ROOMCAST_TEST_URL) list.push(['real node', () => process.env.ROOMCAST_TEST_URL!]);
  return list;
}

/** Resolves with what `fn` resolves with, or rejects after `ms`. */
export function within<T>(fn: (resolve: (v: T) => void) => void, ms = 5000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timed out')), ms);
    fn((v) => {
      clearTimeout(t);
      resolve(v);
    });
  });
}

/** A room name no other run uses. */
export const roomName = (prefix: string) =>
  `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
