// The roomcast demo chat: plain DOM, built into demo/dist/app.js by `npm run build:demo`.
import { RoomcastClient, type ConnectionState, type Room, type RoomMessageOf } from '../../src/index.js';

type Events = {
  chat: { text: string; name: string; mid: string };
  typing: { name: string; cid?: string };
  hello: { name: string };
};

const params = new URLSearchParams(location.search);
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function defaultWsUrl(): string {
  const explicit = params.get('ws');
  if (explicit) return explicit;
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

const token = params.get('token') ?? undefined;
const transportParam = params.get('transport');
const client = new RoomcastClient({
  url: defaultWsUrl(),
  ...(token ? { token } : {}),
  ...(transportParam === 'http' || transportParam === 'websocket' ? { transport: transportParam } : {}),
  autoConnect: false,
});
(window as unknown as { roomcast: unknown }).roomcast = client; // for debugging and the e2e test

// ---- connection badge ----------------------------------------------------------------
const stateEl = $('state');
const transportEl = $('transport');
function showState(s: ConnectionState) {
  stateEl.textContent = s;
  stateEl.className = `badge state-${s}`;
  stateEl.dataset.state = s;
  transportEl.textContent = client.transportKind === 'http' ? 'SSE + HTTP' : 'WebSocket';
}
client.on('state', (s) => showState(s));
client.on('transport', () => {
  showState(client.state);
  system('WebSocket unavailable: using the SSE + HTTP fallback');
});
client.on('disconnected', (d) => {
  if (room) system(`disconnected (${d.code} ${d.reason})${d.willReconnect ? ', reconnecting…' : ''}`);
});
client.on('closed', (c) => system(`connection closed for good: ${c.reason}`));
showState(client.state);

// ---- chat ------------------------------------------------------------------------------
const messagesEl = $<HTMLUListElement>('messages');
const membersEl = $<HTMLUListElement>('members');
const typingEl = $('typing');
const names = new Map<string, string>(); // user id -> display name
let myName = '';
const myCid = Math.random().toString(36).slice(2, 10); // this page, to recognise our own volatile messages
let room: Room<Events> | null = null;
let offs: (() => void)[] = [];
const pendingByMid = new Map<string, HTMLLIElement>();
const joinNotices = new Map<string, ReturnType<typeof setTimeout>>();
const shownMids = new Set<string>();

function scrollDown() {
  messagesEl.scrollTop = messagesEl.scrollHeight;
}

function system(text: string) {
  const li = document.createElement('li');
  li.className = 'system';
  li.textContent = text;
  messagesEl.append(li);
  scrollDown();
}

/** How a user shows: the name their messages or hello gave, else a short label ("guest-1a2b")
 * rather than the whole id (anonymous users have long hex ids). */
function label(user: string): string {
  const known = names.get(user);
  if (known) return known;
  if (user === client.welcome?.user && myName) return myName;
  if (user === 'backend') return 'backend'; // messages published by a backend (HTTP API, emitters)
  return `guest-${user.slice(0, 4)}`;
}

function chatLine(name: string, text: string, ts: number | undefined, cls: string[]): HTMLLIElement {
  const li = document.createElement('li');
  li.className = ['chat', ...cls].join(' ');
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = name;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  li.append(who, body);
  if (ts) {
    const time = document.createElement('span');
    time.className = 'time';
    time.textContent = new Date(ts).toLocaleTimeString();
    li.append(time);
  }
  return li;
}

function showChat(m: RoomMessageOf<Events> & { event: 'chat' }) {
  const d = m.data;
  if (!d || typeof d.text !== 'string') return;
  if (d.name) names.set(m.from, d.name);
  if (d.mid && shownMids.has(d.mid)) return;
  if (d.mid) shownMids.add(d.mid);
  const mine = d.mid !== undefined && pendingByMid.has(d.mid);
  const li = chatLine(d.name || label(m.from), d.text, m.ts, mine ? ['mine'] : []);
  if (typeof m.offset === 'number') li.dataset.offset = String(m.offset);
  const pending = d.mid ? pendingByMid.get(d.mid) : undefined;
  if (pending) {
    pending.replaceWith(li);
    pendingByMid.delete(d.mid);
  } else {
    messagesEl.append(li);
  }
  clearTyping(m.from);
  scrollDown();
  renderMembers();
}

// typing indicators: user -> {name, until}
const typing = new Map<string, { name: string; timer: ReturnType<typeof setTimeout> }>();
function renderTyping() {
  const who = [...typing.values()].map((t) => t.name);
  typingEl.textContent = who.length === 0 ? '' : `${who.join(', ')} ${who.length === 1 ? 'is' : 'are'} typing…`;
}
function clearTyping(user: string) {
  const t = typing.get(user);
  if (t) {
    clearTimeout(t.timer);
    typing.delete(user);
    renderTyping();
  }
}

function renderMembers() {
  if (!room) return;
  const me = client.welcome?.user;
  const members = room.members;
  membersEl.replaceChildren(
    ...members.map((m) => {
      const li = document.createElement('li');
      li.textContent = label(m.user);
      if (m.user === me) li.className = 'me';
      li.dataset.user = m.user;
      return li;
    }),
  );
  $('member-count').textContent = String(members.length);
}

function joinRoom(name: string, roomName: string) {
  myName = name;
  if (room) {
    for (const off of offs) off();
    void room.leave();
  }
  messagesEl.replaceChildren();
  typing.clear();
  renderTyping();
  shownMids.clear();
  pendingByMid.clear();
  $('room-title').textContent = `# ${roomName}`;
  $('chat').hidden = false;
  const r = client.join<Events>(roomName, { history: 50, presence: true });
  room = r;
  offs = [
    r.onEvent('chat', (_d, m) => showChat(m)),
    r.onEvent('hello', (d, m) => {
      names.set(m.from, d.name);
      const t = joinNotices.get(m.from);
      if (t) {
        clearTimeout(t);
        joinNotices.delete(m.from);
        system(`${d.name} joined`);
      }
      renderMembers();
    }),
    r.onEvent('typing', (d, m) => {
      if (d.cid === myCid || m.from === client.welcome?.user) return; // our own (echoed over SSE)
      clearTyping(m.from);
      typing.set(m.from, { name: d.name || label(m.from), timer: setTimeout(() => clearTyping(m.from), 3000) });
      renderTyping();
    }),
    r.on('joined', (ev) => {
      system(ev.wasRecovering ? (ev.recovered ? 'reconnected: caught up' : 'reconnected') : `joined #${roomName}`);
      r.publishVolatile('hello', { name: myName });
    }),
    r.on('recovery_failed', (ev) => {
      system('some messages could not be recovered: reloading history');
      messagesEl.replaceChildren();
      shownMids.clear();
      for (const m of ev.messages) if (m.event === 'chat') showChat(m as RoomMessageOf<Events> & { event: 'chat' });
    }),
    r.on('member_joined', (ev) => {
      // Say who joined once their hello tells us their name (or after a moment without one).
      const known = names.get(ev.user);
      if (known) system(`${known} joined`);
      else if (!joinNotices.has(ev.user)) {
        joinNotices.set(
          ev.user,
          setTimeout(() => {
            joinNotices.delete(ev.user);
            system(`${label(ev.user)} joined`);
          }, 1500),
        );
      }
      r.publishVolatile('hello', { name: myName }); // let the newcomer learn our name
    }),
    r.on('member_left', (ev) => {
      system(`${label(ev.user)} left`);
      clearTyping(ev.user);
    }),
    r.on('members', () => renderMembers()),
    r.on('error', (e) => system(`cannot join: ${e.message}`)),
  ];
  if (client.state === 'disconnected' || client.state === 'closed') client.connect();
  const u = new URL(location.href);
  u.searchParams.set('name', name);
  u.searchParams.set('room', roomName);
  history.replaceState(null, '', u);
}

function newMid(): string {
  return Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
}

function send(text: string) {
  if (!room || !text.trim()) return;
  const mid = newMid();
  const li = chatLine(myName, text, undefined, ['mine', 'pending']);
  pendingByMid.set(mid, li);
  messagesEl.append(li);
  scrollDown();
  room.publish('chat', { text, name: myName, mid }, { echo: true }).then(
    () => {
      // the echo replaces the pending line; without one, confirm it here
      li.classList.remove('pending');
    },
    (err: Error & { code?: string }) => {
      li.classList.remove('pending');
      li.classList.add('failed');
      li.title = `not sent: ${err.code ?? err.message}`;
      pendingByMid.delete(mid);
    },
  );
}

let lastTypingSent = 0;
$<HTMLInputElement>('text').addEventListener('input', () => {
  const now = Date.now();
  if (room && now - lastTypingSent > 1500) {
    lastTypingSent = now;
    room.publishVolatile('typing', { name: myName, cid: myCid });
  }
});

$<HTMLFormElement>('compose').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $<HTMLInputElement>('text');
  send(input.value);
  input.value = '';
  lastTypingSent = 0;
});

$<HTMLFormElement>('join').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = $<HTMLInputElement>('name').value.trim();
  const roomName = $<HTMLInputElement>('room').value.trim();
  if (name && roomName) joinRoom(name, roomName);
});

const initialName = params.get('name');
const initialRoom = params.get('room');
if (initialName) $<HTMLInputElement>('name').value = initialName;
if (initialRoom) $<HTMLInputElement>('room').value = initialRoom;
if (initialName && initialRoom) joinRoom(initialName, initialRoom);
