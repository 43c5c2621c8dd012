// The roomcast admin page: reads /admin/api/* with the admin key kept in this tab's
// sessionStorage (never in the URL). Everything shown is written with textContent:
// room names, user ids and message data come from clients.
'use strict';
(() => {
  const STORE = 'roomcast-admin-key';
  const REFRESH_MS = 5000;
  const $ = (id) => document.getElementById(id);
  let timer = null;

  const key = () => sessionStorage.getItem(STORE) || '';

  function status(text, error) {
    $('status').textContent = text;
    $('status').className = error ? 'error' : '';
  }

  async function call(path, init) {
    const headers = Object.assign({ Authorization: 'Bearer ' + key() }, (init && init.headers) || {});
    const resp = await fetch(path, Object.assign({}, init, { headers, cache: 'no-store' }));
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      body = null;
    }
    if (resp.status === 401) {
      forget();
      throw new Error('the admin key was refused');
    }
    if (!resp.ok) {
      const msg = body && body.error ? body.error.message : 'HTTP ' + resp.status;
      throw new Error(msg);
    }
    return body;
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text === undefined || text === null ? '' : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(tbody, rows, render) {
    tbody.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement('tr');
      render(tr, r);
      tbody.appendChild(tr);
    }
  }

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    return s + ' s ago';
  }

  async function refresh() {
    try {
      const [n, r] = await Promise.all([call('/admin/api/nodes'), call('/admin/api/rooms')]);
      fill($('nodes').tBodies[0], n.nodes, (tr, node) => {
        cell(tr, node.node_id + (node.node_id === n.self ? ' (this node)' : ''));
        cell(tr, node.version);
        cell(tr, node.connections, 'num');
        cell(tr, node.rooms, 'num');
        cell(tr, node.messages_per_sec, 'num');
        cell(tr, node.bus_up ? 'up' : 'down', node.bus_up ? 'up' : 'down');
        cell(
          tr,
          node.shards && node.shards.length
            ? node.shards.map((s) => s.addr + (s.up ? ' up' : ' down')).join(', ')
            : '-',
        );
        cell(tr, ago(n.now_ms - node.reported_ms));
      });
      $('nodes-note').textContent = n.nodes.length + ' node(s)';
      fill($('rooms-members').tBodies[0], r.by_members, (tr, x) => {
        cell(tr, x.room);
        cell(tr, x.members, 'num');
        cell(tr, x.messages_per_sec, 'num');
        cell(tr, x.nodes, 'num');
      });
      fill($('rooms-messages').tBodies[0], r.by_messages, (tr, x) => {
        cell(tr, x.room);
        cell(tr, x.messages_per_sec, 'num');
        cell(tr, x.members, 'num');
        cell(tr, x.nodes, 'num');
      });
      status('updated ' + new Date().toLocaleTimeString());
    } catch (e) {
      status(e.message, true);
    }
  }

  async function showRoom(name) {
    try {
      const r = await call('/admin/api/room?name=' + encodeURIComponent(name));
      $('room').hidden = false;
      $('room-count').textContent =
        r.count.users + ' user(s), ' + r.count.connections + ' connection(s)';
      const ul = $('room-members');
      ul.replaceChildren();
      for (const m of r.members) {
        const li = document.createElement('li');
        li.textContent = m.user;
        ul.appendChild(li);
      }
      $('room-offset').textContent = 'offset ' + r.offset + ', epoch ' + r.epoch;
      fill($('room-messages').tBodies[0], r.messages.slice().reverse(), (tr, m) => {
        cell(tr, m.offset, 'num');
        cell(tr, new Date(m.ts).toLocaleTimeString());
        cell(tr, m.from);
        cell(tr, m.event);
        cell(tr, JSON.stringify(m.data), 'data');
      });
    } catch (e) {
      status(e.message, true);
    }
  }

  async function kick(user) {
    try {
      await call('/admin/api/disconnect', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ user }),
      });
      $('kick-result').textContent = 'disconnected ' + user + ' on every node';
    } catch (e) {
      $('kick-result').textContent = e.message;
    }
  }

  function open() {
    $('login').hidden = true;
    $('panel').hidden = false;
    $('forget').hidden = false;
    refresh();
    if (timer === null) timer = setInterval(refresh, REFRESH_MS);
  }

  function forget() {
    sessionStorage.removeItem(STORE);
    if (timer !== null) clearInterval(timer);
    timer = null;
    $('panel').hidden = true;
    $('login').hidden = false;
    $('forget').hidden = true;
  }

  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(STORE, $('key').value.trim());
    $('key').value = '';
    status('');
    open();
  });
  $('forget').addEventListener('click', () => {
    forget();
    status('key forgotten');
  });
  $('room-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    showRoom($('room-name').value.trim());
  });
  $('kick-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    kick($('kick-user').value.trim());
  });
  if (key()) open();
})();
