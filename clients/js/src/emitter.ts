/** A map of event names to listener argument tuples. */
export type EventArgs = { [event: string]: unknown[] };

export type Listener<A extends unknown[]> = (...args: A) => void;

/** A small typed event emitter: `on` returns a function that removes the listener. */
export class Emitter<M extends EventArgs> {
  private listeners = new Map<keyof M, Set<Listener<never>>>();

  on<K extends keyof M>(event: K, fn: Listener<M[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => this.off(event, fn);
  }

  once<K extends keyof M>(event: K, fn: Listener<M[K]>): () => void {
    const off = this.on(event, ((...args: M[K]) => {
      off();
      fn(...args);
    }) as Listener<M[K]>);
    return off;
  }

  off<K extends keyof M>(event: K, fn: Listener<M[K]>): void {
    this.listeners.get(event)?.delete(fn as Listener<never>);
  }

  protected emit<K extends keyof M>(event: K, ...args: M[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as Listener<M[K]>)(...args);
      } catch (err) {
        // A throwing listener must not break the client's state machine.
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  /** Remove every listener. */
  removeAllListeners(): void {
    this.listeners.clear();
  }
}
