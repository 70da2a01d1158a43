// The tenthbit web client: one WebSocket to /ws on the page's own origin,
// one 10bit packet per text message. No framework, no third-party requests.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    ws: null,
    nextId: 1,
    pending: new Map(), // request id -> {resolve, reject}
    creds: null, // kept in memory only, to log in again after a reconnect
    me: null,
    topics: new Map(), // topic id -> {name, members: Set}
    current: null, // open topic id
    oldest: null, // id of the oldest message shown
    retry: 0,
  };

  class ReplyError extends Error {
    constructor(p) {
      super(p.ex && p.ex.message ? p.ex.message : 'request failed');
      this.code = p.ex && p.ex.code;
    }
  }

  function setStatus(text) { $('status').textContent = text; }

  function showError(err) {
    const el = $('error');
    if (!err) { el.hidden = true; el.textContent = ''; return; }
    el.textContent = err.code ? `${err.message} (${err.code})` : String(err.message || err);
    el.hidden = false;
  }

  function connect() {
    setStatus('Connecting…');
    const ws = new WebSocket(`wss://${location.host}/ws`);
    state.ws = ws;
    ws.onmessage = (e) => {
      let p;
      try { p = JSON.parse(e.data); } catch (_) { return; }
      handle(p);
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      for (const { reject } of state.pending.values()) reject(new Error('connection lost'));
      state.pending.clear();
      setComposer(false);
      const delay = Math.min(15000, 500 * 2 ** state.retry++);
      setStatus(`Disconnected; reconnecting in ${Math.ceil(delay / 1000)} s…`);
      setTimeout(connect, delay);
    };
  }

  function send(packet) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(packet));
  }

  // Sends a request and resolves with its reply (the packet whose ex.for is its id).
  function request(op, ex, topic) {
    return new Promise((resolve, reject) => {
      if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
        reject(new Error('not connected; reconnecting'));
        return;
      }
      const id = `w${state.nextId++}`;
      state.pending.set(id, { resolve, reject });
      const packet = { op, id };
      if (topic) packet.topic = topic;
      if (ex) packet.ex = ex;
      send(packet);
    });
  }

  function handle(p) {
    const ex = p.ex || {};
    if (ex.for && state.pending.has(ex.for)) {
      const { resolve, reject } = state.pending.get(ex.for);
      state.pending.delete(ex.for);
      if (p.op === 'error') reject(new ReplyError(p)); else resolve(p);
      return;
    }
    switch (p.op) {
      case 'welcome': return welcomed(ex);
      case 'ping': return send({ op: 'pong', ex: { for: p.id } });
      case 'bye': return showError({ message: ex.message || 'the server closed the session', code: ex.code });
      case 'error': return showError(new ReplyError(p));
      case 'meta': if (p.topic) upsertTopic(p.topic, ex); return;
      case 'send': if (p.topic === state.current) addMessage(p, false); return;
      case 'join': return memberChange(p, true);
      case 'leave': return memberChange(p, false);
      case 'delete': return removeTopic(p.topic, 'The topic was deleted.');
      default: return;
    }
  }

  async function welcomed(ex) {
    state.retry = 0;
    setStatus(`Connected to ${ex.server}`);
    if (state.creds) {
      await logIn(state.creds.username, state.creds.password, true);
    } else {
      showView('login');
    }
  }

  function showView(which) {
    $('login-view').hidden = which !== 'login';
    $('chat-view').hidden = which !== 'chat';
    $('logout').hidden = which !== 'chat';
    if (which === 'login') $('username').focus();
  }

  async function logIn(username, password, again) {
    try {
      await request('auth', { method: 'password', username, password });
    } catch (err) {
      state.creds = null;
      showView('login');
      showError(err);
      return;
    }
    state.creds = { username, password };
    state.me = username;
    // Counts logins on this page (a test waits for a re-login after a restart).
    document.body.dataset.sessions = String(Number(document.body.dataset.sessions || 0) + 1);
    showError(null);
    setStatus(`Logged in as ${username}`);
    showView('chat');
    // The login sequence's topic metas follow the ack; after a reconnect,
    // the open topic is read again to catch up on what was missed.
    if (again && state.current) openTopic(state.current);
    else $('message').focus();
  }

  function upsertTopic(id, ex) {
    const t = state.topics.get(id) || { name: id, members: new Set() };
    if (ex.name) t.name = ex.name;
    if (Array.isArray(ex.members)) t.members = new Set(ex.members);
    state.topics.set(id, t);
    renderTopics();
    if (id === state.current) renderMembers();
  }

  function removeTopic(id, notice) {
    state.topics.delete(id);
    if (id === state.current) {
      state.current = null;
      $('messages').textContent = '';
      $('topic-title').textContent = notice || 'No topic open';
      $('members').textContent = '';
      $('earlier').hidden = true;
      $('leave').hidden = true;
      setComposer(false);
    }
    renderTopics();
  }

  function memberChange(p, joined) {
    const t = state.topics.get(p.topic);
    if (!t) return;
    if (joined) t.members.add(p.from); else t.members.delete(p.from);
    if (p.topic === state.current) {
      renderMembers();
      const why = p.ex && p.ex.reason === 'banned' ? ' (banned)' : '';
      addNotice(`${p.from} ${joined ? 'joined' : 'left'}${why}`);
    }
  }

  function renderTopics() {
    const ul = $('topics');
    ul.textContent = '';
    const sorted = [...state.topics.entries()].sort((a, b) => a[1].name.localeCompare(b[1].name));
    for (const [id, t] of sorted) {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = `#${t.name}`;
      b.setAttribute('aria-current', String(id === state.current));
      b.addEventListener('click', () => openTopic(id));
      li.append(b);
      ul.append(li);
    }
  }

  function renderMembers() {
    const ul = $('members');
    ul.textContent = '';
    const t = state.topics.get(state.current);
    if (!t) return;
    for (const name of [...t.members].sort()) {
      const li = document.createElement('li');
      li.textContent = name;
      ul.append(li);
    }
  }

  function setComposer(on) {
    $('message').disabled = !on;
    $('send').disabled = !on;
  }

  function messageItem(p) {
    const li = document.createElement('li');
    const time = document.createElement('time');
    const when = new Date(p.ts || Date.now());
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    const from = document.createElement('span');
    from.className = 'from';
    from.textContent = p.from || '?';
    const body = document.createElement('span');
    body.className = 'body';
    const ex = p.ex || {};
    body.textContent = typeof ex.body === 'string' ? ex.body : JSON.stringify(ex);
    li.append(time, from, body);
    return li;
  }

  function addMessage(p) {
    const log = $('messages');
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(messageItem(p));
    if (!state.oldest) state.oldest = p.id;
    if (atEnd) log.scrollTop = log.scrollHeight;
  }

  function addNotice(text) {
    const li = document.createElement('li');
    li.className = 'notice';
    li.textContent = text;
    $('messages').append(li);
  }

  async function openTopic(id) {
    const t = state.topics.get(id);
    if (!t) return;
    state.current = id;
    state.oldest = null;
    $('topic-title').textContent = `#${t.name}`;
    $('messages').textContent = '';
    $('leave').hidden = false;
    renderTopics();
    renderMembers();
    setComposer(true);
    await loadHistory(false);
    $('message').focus();
  }

  async function loadHistory(earlier) {
    const id = state.current;
    const ex = { limit: 50 };
    if (earlier && state.oldest) ex.before = state.oldest;
    let page;
    try {
      page = await request('history', ex, id);
    } catch (err) { showError(err); return; }
    if (id !== state.current) return;
    const msgs = Array.isArray(page.ex.messages) ? page.ex.messages : [];
    const log = $('messages');
    const items = msgs.map(messageItem);
    if (earlier) {
      const before = log.scrollHeight;
      log.prepend(...items);
      log.scrollTop += log.scrollHeight - before;
    } else {
      log.append(...items);
      log.scrollTop = log.scrollHeight;
    }
    if (msgs.length) state.oldest = msgs[0].id;
    $('earlier').hidden = !page.ex.more;
  }

  function bind() {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      logIn($('username').value.trim(), $('password').value, false);
    });
    $('register').addEventListener('click', async () => {
      const form = $('login-form');
      if (!form.reportValidity()) return;
      const username = $('username').value.trim();
      const password = $('password').value;
      try {
        await request('register', { username, password });
      } catch (err) { showError(err); return; }
      logIn(username, password, false);
    });
    $('logout').addEventListener('click', () => {
      state.creds = null;
      state.me = null;
      state.topics.clear();
      removeTopic(state.current);
      send({ op: 'quit' });
    });
    $('send-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const input = $('message');
      const body = input.value;
      const topic = state.current;
      if (!body.trim() || !topic) return;
      try {
        const ack = await request('send', { body }, topic);
        input.value = '';
        // The sender's own connection gets the ack, not the relay.
        if (topic === state.current) {
          addMessage({ id: ack.ex.id, ts: ack.ex.ts, from: state.me, ex: { body } });
        }
      } catch (err) { showError(err); }
    });
    $('create-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const name = $('create-name').value.trim();
      try {
        const meta = await request('create', { name });
        upsertTopic(meta.topic, meta.ex);
        $('create-name').value = '';
        openTopic(meta.topic);
      } catch (err) { showError(err); }
    });
    $('find-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const name = $('find-name').value.trim();
      let found;
      try {
        found = await request('find', { kind: 'topics', name, limit: 50 });
      } catch (err) { showError(err); return; }
      const ul = $('found');
      ul.textContent = '';
      const topics = Array.isArray(found.ex.topics) ? found.ex.topics : [];
      if (!topics.length) {
        const li = document.createElement('li');
        li.textContent = 'No topic found.';
        ul.append(li);
      }
      for (const t of topics) {
        const li = document.createElement('li');
        const b = document.createElement('button');
        b.type = 'button';
        const member = state.topics.has(t.id);
        b.textContent = `${member ? 'Open' : 'Join'} #${t.name} (${t.members})`;
        b.addEventListener('click', () => joinTopic(t.id));
        li.append(b);
        ul.append(li);
      }
    });
    $('earlier').addEventListener('click', () => loadHistory(true));
    $('leave').addEventListener('click', async () => {
      const topic = state.current;
      try {
        await request('leave', null, topic);
        removeTopic(topic, 'You left the topic.');
      } catch (err) { showError(err); }
    });
  }

  async function joinTopic(id) {
    try {
      const meta = await request('join', null, id);
      $('found').textContent = '';
      upsertTopic(meta.topic, meta.ex);
      openTopic(meta.topic);
    } catch (err) { showError(err); }
  }

  bind();
  connect();
})();
