// A minimal EventSource for Node (tests only): fetch + a text/event-stream parser.
// Node 20 has no EventSource; apps in Node can pass one from a package of their choice.
export class NodeEventSource {
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  private listeners = new Map<string, ((ev: { data: string; lastEventId?: string }) => void)[]>();
  private ac = new AbortController();
  private closed = false;

  constructor(readonly url: string) {
    void this.run();
  }

  addEventListener(type: string, fn: (ev: { data: string; lastEventId?: string }) => void): void {
    const l = this.listeners.get(type) ?? [];
    l.push(fn);
    this.listeners.set(type, l);
  }

  close(): void {
    this.closed = true;
    this.readyState = 2;
    this.ac.abort();
  }

  private dispatch(block: string): void {
    let event = 'message';
    let id: string | undefined;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
    if (data.length === 0) return;
    const ev = id === undefined ? { data: data.join('\n') } : { data: data.join('\n'), lastEventId: id };
    for (const fn of this.listeners.get(event) ?? []) fn(ev);
  }

  private async run(): Promise<void> {
    try {
      const res = await fetch(this.url, { headers: { accept: 'text/event-stream' }, signal: this.ac.signal });
      if (!res.ok || !res.body) {
        this.readyState = 2;
        if (!this.closed) this.onerror?.({ status: res.status });
        return;
      }
      this.readyState = 1;
      this.onopen?.({});
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          this.dispatch(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
      if (!this.closed) {
        this.readyState = 0;
        this.onerror?.({});
      }
    } catch {
      if (!this.closed) {
        this.readyState = 2;
        this.onerror?.({});
      }
    }
  }
}
