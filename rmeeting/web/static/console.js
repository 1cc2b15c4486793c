// rmeeting's web console: plain JavaScript over the public v1 API (docs/protocol.md).
//
//   /               start page: create a meeting (you become its host) or join one by link
//   /m/<id>         a meeting; a host link adds #host_key=… (a fragment never reaches the server's
//                   logs; the page presents it in the WebSocket's first frame, never in a URL)
//
// One WebSocket per page. After a drop it reconnects by itself (backoff with jitter) with its
// token and the last chat seq it saw: the welcome then carries what was missed (`missed`, `gap`),
// and chat is deduplicated by seq, so nothing is lost or shown twice.
'use strict';

const FLAGS = ['camera', 'mic', 'rename', 'chat', 'locked'];
const DEFAULTS = { camera: true, mic: true, rename: true, chat: true, locked: false };
const LABELS = {
  camera: ['Cameras', 'members may turn their camera on'],
  mic: ['Microphones', 'members may turn their microphone on'],
  rename: ['Renaming', 'members may change their name'],
  chat: ['Chat', 'members may write in the chat'],
  locked: ['Locked', 'nobody new may join'],
};
const SAID = {  // what a change did, for the chat's notes: [set to true, set to false]
  camera: ['allowed cameras', 'turned cameras off'],
  mic: ['allowed microphones', 'turned microphones off'],
  rename: ['allowed renaming', 'turned renaming off'],
  chat: ['turned chat on', 'turned chat off'],
  locked: ['locked the meeting', 'unlocked the meeting'],
};
const BACKOFF = [0.25, 0.5, 1, 2, 4, 8, 15];  // seconds before reconnect attempt 1, 2, 3…
const PING_EVERY = 25000;  // ms; a pong must come within PONG_WITHIN or the link is dead
const PONG_WITHIN = 10000;
// close codes after which reconnecting cannot help (docs/protocol.md, "Close codes")
const FINAL = new Set([4000, 4001, 4003, 4009, 4400, 4401, 4403, 4404, 4410, 4423, 4429, 4430]);

const $ = (id) => document.getElementById(id);

const S = {
  meetingId: '', hostKey: '', name: '', token: '', lobby: new Map(),
  me: null, meeting: null, roster: new Map(), names: new Map(),
  controls: { ...DEFAULTS }, revision: 0, who: {}, expires: {}, pendingFlags: new Set(),
  lastSeq: 0, seen: new Set(), haveChat: false, unconfirmed: [],
  ws: null, welcomed: false, joinedOnce: false, attempt: 0, retryAt: 0, retryTimer: 0,
  refusal: null, endReason: '', leaving: false, clockOffset: 0,
  nextId: 0, pending: new Map(), pingTimer: 0, pongTimer: 0, hostLink: '',
  memberControls: {},  // members' own flags: id -> {camera, mic, rename, chat} (docs: Moderation)
};

// --- moderation (docs/protocol.md, Moderation) ----------------------------------------------

const moderator = () => Boolean(S.me) && (S.me.role === 'host' || S.me.role === 'cohost');
const isHost = () => Boolean(S.me) && S.me.role === 'host';

function may(id, flag) {  // the member's own flag if it has one, else the room's
  const own = (S.memberControls[id] || {})[flag];
  return own === undefined || own === null ? Boolean(S.controls[flag]) : own;
}

function setMember(id, changes) {  // a roster entry (and S.me) with these fields changed
  const m = S.roster.get(id);
  if (m) S.roster.set(id, { ...m, ...changes });
  if (S.me && S.me.id === id) S.me = { ...S.me, ...changes };
}

function moderate(frame, what) {
  say('roster-error', '');
  send(frame, (reply) => {
    if (reply.type === 'error') say('roster-error', `Could not ${what}: ${reply.message}`);
  });
}

// --- small helpers --------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function show(section) {
  for (const id of ['landing', 'lobby', 'waiting', 'room', 'over']) $(id).hidden = id !== section;
}

function say(id, text) { $(id).textContent = text || ''; }

const serverNow = () => Date.now() / 1000 + S.clockOffset;

// server time minus local time, from the server's timestamps: a frame arrives after its stamp, so
// the largest sample is the least delayed one (a new connection starts over)
function sample(ts, reset = false) {
  const offset = ts - Date.now() / 1000;
  if (reset || offset > S.clockOffset) S.clockOffset = offset;
}

function clock(ts) {
  return new Date((ts - S.clockOffset) * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function countdown(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${r}` : `${m}:${r}`;
}

function lasting(seconds) {  // "for 10 min": a change's duration, rounded for people
  const s = Math.max(1, Math.round(seconds));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 360) / 10} h`;
}

async function apiJson(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw Object.assign(new Error(body.error || `HTTP ${response.status}`), { status: response.status });
  }
  return body;
}

const hostHeaders = () => ({ Authorization: `Bearer ${S.hostKey}` });
const tokenKey = () => `rmeeting.token.${S.meetingId}`;

// a meeting id from what someone pasted: a console link, the API's join_url, or the bare id
function meetingFrom(text) {
  const value = text.trim();
  const found = value.match(/\/(?:m|v1\/meetings)\/([A-Za-z0-9_.-]{1,64})(?:\/ws)?\/?(?:[?#].*)?$/);
  if (found) return found[1];
  return /^[A-Za-z0-9_.-]{1,64}$/.test(value) ? value : null;
}

// --- the start page and the lobby -----------------------------------------------------------

function startPage() {
  show('landing');
  say('meeting-title', 'Start or join a meeting');
  const name = localStorage.getItem('rmeeting.name') || '';
  $('create-you').value = name;
  $('join-you').value = name;
  $('create-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    say('landing-error', '');
    const you = $('create-you').value.trim();
    try {
      const made = await apiJson('/v1/meetings', {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ name: $('create-name').value.trim() }),
      });
      localStorage.setItem('rmeeting.name', you);
      sessionStorage.setItem(`rmeeting.autojoin.${made.id}`, '1');
      location.assign(`/m/${encodeURIComponent(made.id)}#host_key=${encodeURIComponent(made.host_key)}`);
    } catch (err) {
      say('landing-error', `Could not create the meeting: ${err.message}`);
    }
  });
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const link = $('join-link').value;
    const id = meetingFrom(link);
    if (!id) { say('landing-error', 'That is not a meeting link or id.'); return; }
    localStorage.setItem('rmeeting.name', $('join-you').value.trim());
    sessionStorage.setItem(`rmeeting.autojoin.${id}`, '1');
    const hostKey = new URLSearchParams(link.split('#')[1] || '').get('host_key');
    const fragment = hostKey ? `#host_key=${encodeURIComponent(hostKey)}` : '';
    location.assign(`/m/${encodeURIComponent(id)}${fragment}`);
  });
}

async function meetingPage(id) {
  S.meetingId = id;
  S.hostKey = new URLSearchParams(location.hash.slice(1)).get('host_key') || '';
  S.token = sessionStorage.getItem(tokenKey()) || '';
  S.name = localStorage.getItem('rmeeting.name') || '';
  $('lobby-form').addEventListener('submit', (event) => {
    event.preventDefault();
    S.name = $('lobby-you').value.trim();
    localStorage.setItem('rmeeting.name', S.name);
    say('lobby-error', '');
    $('lobby-join').disabled = true;
    connect();
  });
  try {
    const meeting = await apiJson(`/v1/meetings/${encodeURIComponent(id)}`);
    say('meeting-title', meeting.name);
    if (meeting.ended) {
      document.title = `${meeting.name} · rmeeting`;
      ended(meeting.ended_reason, meeting.ended_at);
      return;
    }
    document.title = `${meeting.name} · rmeeting`;
    say('lobby-title', `Join “${meeting.name}”`);
    const n = meeting.members;
    say('lobby-info', (n ? `${n} ${n === 1 ? 'person is' : 'people are'} here.` : 'Nobody is here yet.')
      + (S.hostKey ? ' You will join as the host.' : ''));
  } catch (err) {
    show('lobby');
    say('lobby-error', err.status === 404
      ? 'No such meeting, or it has ended.' : `Could not load the meeting: ${err.message}`);
    $('lobby-join').disabled = true;
    return;
  }
  const auto = S.token || (sessionStorage.getItem(`rmeeting.autojoin.${id}`) && S.name);
  sessionStorage.removeItem(`rmeeting.autojoin.${id}`);
  $('lobby-you').value = S.name;
  show('lobby');
  if (auto) { $('lobby-join').disabled = true; connect(); return; }
  $('lobby-you').focus();
}

// --- the connection -------------------------------------------------------------------------

function connect() {
  clearTimeout(S.retryTimer);
  S.retryTimer = 0;
  // the secrets (host key, reconnect token) go in the first frame: a URL is logged by proxies
  const hello = { type: 'auth' };
  if (S.token) hello.token = S.token; else hello.name = S.name;
  if (S.hostKey) hello.host_key = S.hostKey;
  if (S.haveChat) hello.last_seq = S.lastSeq;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const path = `/v1/meetings/${encodeURIComponent(S.meetingId)}/ws`;
  const ws = new WebSocket(`${scheme}//${location.host}${path}?auth=frame`);
  S.ws = ws;
  S.welcomed = false;
  S.refusal = null;
  ws.onopen = () => ws.send(JSON.stringify(hello));
  ws.onmessage = (event) => { if (S.ws === ws) onFrame(JSON.parse(event.data)); };
  ws.onclose = (event) => { if (S.ws === ws) closed(event.code); };
  status(S.joinedOnce ? 'Reconnecting…' : 'Connecting…', 'busy');
}

function status(text, kind) {
  const node = $('conn');
  node.hidden = false;
  node.textContent = text;
  node.dataset.state = kind;
  const online = kind === 'online';
  $('chat-send').disabled = !online;
  $('room').dataset.online = String(online);
}

function send(frame, onReply) {
  if (!S.ws || !S.welcomed) {
    onReply?.({ type: 'error', code: 'offline', message: 'not connected; wait for the reconnect' });
    return;
  }
  const id = `c${++S.nextId}`;
  S.pending.set(id, { frame, onReply });
  S.ws.send(JSON.stringify({ ...frame, id }));
}

function closed(code) {
  const wasWelcomed = S.welcomed;
  S.ws = null;
  S.welcomed = false;
  clearInterval(S.pingTimer);
  clearTimeout(S.pongTimer);
  for (const { frame, onReply } of S.pending.values()) {
    if (frame.type === 'chat') S.unconfirmed.push(frame.text);  // sent? the resume will tell
    else onReply?.({ type: 'error', code: 'offline', message: 'the connection dropped before an answer' });
  }
  S.pending.clear();
  S.pendingFlags.clear();
  if (S.leaving) return;
  const refusal = S.refusal ? S.refusal.message : '';
  if (code === 4000 || code === 4410) {
    return ended(S.endReason, null);
  }
  if (code === 4003) return over('You were removed', 'The host removed you from this meeting.');
  if (code === 4430) return over('Not let in', 'The host did not let you into this meeting.');
  if (code === 4009) {
    return over('Opened somewhere else',
      'You joined this meeting again from another tab or device, so this page stopped.', true);
  }
  if (code === 4404 && S.joinedOnce) {
    return over('The meeting has ended', 'It ended while you were disconnected.');
  }
  if (FINAL.has(code)) {
    if (code === 4401) { sessionStorage.removeItem(tokenKey()); S.token = ''; }
    if (!S.joinedOnce) {
      show('lobby');
      $('lobby-you').value = S.name;
      $('lobby-join').disabled = false;
      say('lobby-error', `Could not join: ${refusal || `closed with code ${code}`}.`);
      status('Not connected', 'offline');
      return;
    }
    return over('Could not rejoin', `The server refused: ${refusal || `close code ${code}`}.`, true);
  }
  if (wasWelcomed) note('Connection lost. Reconnecting…', 'warn');
  const base = BACKOFF[Math.min(S.attempt, BACKOFF.length - 1)];
  const delay = base * (0.8 + Math.random() * 0.4) * 1000;
  S.attempt += 1;
  S.retryAt = Date.now() + delay;
  S.retryTimer = setTimeout(connect, delay);
  tick();
}

const REASONS = {  // why a meeting ended, for people
  empty: 'nobody was in it for a while',
  max_duration: 'it reached its maximum duration',
};

// the end of a meeting; its host also sees who attended (the tombstone keeps it readable)
function ended(reason, when) {
  const why = reason ? `Reason: ${REASONS[reason] || reason}.` : '';
  const at = when ? `Ended at ${new Date(when).toLocaleString()}. ` : '';
  over('The meeting has ended', at + why);
  if (S.hostKey) showAttendance();
}

async function showAttendance() {
  try {
    const path = `/v1/meetings/${encodeURIComponent(S.meetingId)}/attendance`;
    const rows = (await apiJson(path, { headers: hostHeaders() })).sessions;
    const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : '—');
    $('over-sessions').replaceChildren(...rows.map((r) => el('tr', {},
      el('td', {}, r.name), el('td', {}, r.role), el('td', {}, time(r.joined_at)),
      el('td', {}, time(r.left_at)), el('td', {}, (r.duration_s / 60).toFixed(1)))));
    $('over-attendance').hidden = false;
  } catch (err) {
    say('over-text', `${$('over-text').textContent} The attendance could not be read: ${err.message}.`);
  }
}

function over(title, text, rejoin = false) {
  clearTimeout(S.retryTimer);
  show('over');
  say('over-title', title);
  say('over-text', text);
  $('over-rejoin').hidden = !rejoin;
  status(title, 'offline');
}

function startPing() {
  clearInterval(S.pingTimer);
  S.pingTimer = setInterval(() => {
    const ws = S.ws;
    if (!ws || !S.welcomed) return;
    send({ type: 'ping' }, () => clearTimeout(S.pongTimer));
    S.pongTimer = setTimeout(() => {  // a silent link (a sleeping laptop, a dead NAT entry)
      if (S.ws !== ws) return;
      ws.onclose = null;
      ws.close();
      closed(1006);
    }, PONG_WITHIN);
  }, PING_EVERY);
}

// --- frames from the server -----------------------------------------------------------------

function onFrame(msg) {
  if (typeof msg.ts === 'number') sample(msg.ts);
  if (msg.id !== undefined && S.pending.has(msg.id)) {
    const { onReply } = S.pending.get(msg.id);
    S.pending.delete(msg.id);
    onReply?.(msg);
    if (msg.type === 'ack' || msg.type === 'pong') return;
    if (msg.type === 'error' && onReply) return;
  }
  switch (msg.type) {
    case 'welcome': return welcome(msg);
    case 'chat': return addChat(msg);
    case 'member_joined': return memberJoined(msg);
    case 'member_left': return memberLeft(msg);
    // several joins/leaves that were waiting together: each as if it had come alone
    case 'members_changed': for (const e of msg.events || []) onFrame(e); return undefined;
    case 'member_updated': return memberUpdated(msg);
    case 'controls': return controlsChanged(msg);
    case 'meeting_ended': S.endReason = msg.reason; return undefined;
    case 'waiting': return waitingRoom(msg);
    case 'lobby': return lobbyChanged(msg);
    case 'error':
      if (!S.welcomed) S.refusal = msg;  // a refused join: the close follows
      else say('chat-error', msg.message);
      return undefined;
    default: return undefined;
  }
}

// a knock on a meeting with a waiting room: the server lets us in (a welcome follows) or not
function waitingRoom(msg) {
  show('waiting');
  say('waiting-text', `You are “${msg.name}”. ${msg.message}.`);
  status('Waiting to be let in…', 'busy');
}

// the host's list of who waits: knocks come and go (admitted, refused, gone)
function lobbyChanged(msg) {
  if (msg.state === 'waiting') S.lobby.set(msg.member.id, msg.member);
  else S.lobby.delete(msg.member.id);
  renderLobby();
}

function decide(type, target) {
  say('lobby-card-error', '');
  send({ type, ...target }, (reply) => {
    if (reply.type === 'error') say('lobby-card-error', reply.message);
  });
}

function renderLobby() {
  const moderator = S.me && (S.me.role === 'host' || S.me.role === 'cohost');
  const people = [...S.lobby.values()];
  $('lobby-card').hidden = !moderator || (!people.length && S.meeting?.join_policy !== 'lobby');
  $('lobby-list').replaceChildren(...people.map((k) => el('li', { 'data-knock': k.id },
    el('span', { class: 'name' }, k.name),
    el('button', { type: 'button', class: 'small primary', 'aria-label': `Admit ${k.name}`,
      onclick: () => decide('admit', { member_id: k.id }) }, 'Admit'),
    el('button', { type: 'button', class: 'small danger', 'aria-label': `Refuse ${k.name}`,
      onclick: () => decide('refuse', { member_id: k.id }) }, 'Refuse'))));
  say('lobby-count', `(${people.length})`);
  $('admit-all').disabled = !people.length;
  $('refuse-all').disabled = !people.length;
}

function welcome(w) {
  const resumedView = S.haveChat;
  S.welcomed = true;
  S.joinedOnce = true;
  S.attempt = 0;
  S.token = w.token;
  sessionStorage.setItem(tokenKey(), w.token);
  sample(w.you.joined_at, true);
  S.me = w.you;
  S.meeting = w.meeting;
  S.roster = new Map(w.roster.map((m) => [m.id, m]));
  S.lobby = new Map((w.lobby || []).map((k) => [k.id, k]));
  for (const m of w.roster) S.names.set(m.id, m.name);
  S.memberControls = w.member_controls || {};
  if (w.revision > S.revision) {
    for (const flag of FLAGS) {  // changed while we were away: by whom, we cannot know
      if (resumedView && w.controls[flag] !== S.controls[flag]) {
        S.who[flag] = null;
        delete S.expires[flag];
      }
    }
    S.controls = { ...w.controls };
    S.revision = w.revision;
  }
  const items = w.chat || w.missed || [];
  if (resumedView) {
    const n = items.filter((m) => !S.seen.has(m.seq)).length;
    const which = w.gap ? `The last ${n}` : String(n);
    const what = n ? ` ${which} message${n === 1 ? '' : 's'} sent while you were away:` : '';
    note(`Reconnected.${what}`, 'ok');
  }
  if (w.gap) {  // the server no longer keeps all that came after our last_seq
    const first = items.length ? items[0].seq : w.last_seq + 1;
    const lost = Math.max(1, first - S.lastSeq - 1);
    const them = lost === 1 ? '1 message' : `${lost} messages`;
    note(`${them} from while you were away ${lost === 1 ? 'is' : 'are'} no longer kept by the server`
      + ' and cannot be shown.', 'gap');
  }
  for (const item of items) addChat(item);
  S.lastSeq = Math.max(S.lastSeq, w.last_seq);
  S.haveChat = true;
  confirmUnsent(items);
  const host = S.me.role === 'host';
  $('room').dataset.host = String(host);
  $('host-tools').hidden = !host;
  renderRole();
  say('meeting-title', S.meeting.name);
  document.title = `${S.meeting.name} · rmeeting`;
  const page = `${location.origin}/m/${encodeURIComponent(S.meetingId)}`;
  $('invite-link').value = page;
  S.hostLink = S.hostKey ? `${page}#host_key=${encodeURIComponent(S.hostKey)}` : '';
  show('room');
  status('Connected', 'online');
  renderAll();
  startPing();
  if (host && S.hostKey) loadAudit();
}

// a chat sent just before a drop: delivered if the resume shows it, else back into the box
function confirmUnsent(items) {
  const unsent = S.unconfirmed.filter((text) => !items.some((m) => m.from.id === S.me.id && m.text === text));
  S.unconfirmed = [];
  if (!unsent.length) return;
  const input = $('chat-input');
  if (!input.value) input.value = unsent.join('\n');
  say('chat-error', 'A message you sent as the connection dropped did not arrive; it is back in the box.');
}

function addChat(msg) {
  S.lastSeq = Math.max(S.lastSeq, msg.seq);
  if (S.seen.has(msg.seq)) return;  // a resume never repeats chat, but be sure
  S.seen.add(msg.seq);
  const mine = S.me && msg.from.id === S.me.id;
  const item = el('li', { class: `msg${mine ? ' mine' : ''}`, 'data-seq': String(msg.seq) },
    el('span', { class: 'meta' },
      el('span', { class: 'from' }, msg.from.name),
      msg.from.role === 'host' ? el('span', { class: 'badge' }, 'host') : null,
      el('time', { datetime: new Date((msg.ts - S.clockOffset) * 1000).toISOString() }, clock(msg.ts))),
    el('span', { class: 'text' }, msg.text));
  append(item, msg.seq);
}

function note(text, kind = '') {
  append(el('li', { class: `note ${kind}` }, text), null);
}

function append(item, seq) {
  const list = $('chat');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  let before = null;
  if (seq !== null) {  // in seq order, whatever the arrival order
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (!node.dataset.seq) continue;
      if (Number(node.dataset.seq) < seq) break;
      before = node;
    }
  }
  list.insertBefore(item, before);
  if (atBottom) list.scrollTop = list.scrollHeight;  // unless the reader scrolled up
}

function memberJoined(msg) {
  S.roster.set(msg.member.id, msg.member);
  S.names.set(msg.member.id, msg.member.name);
  if (S.me && msg.member.id !== S.me.id) note(`${msg.member.name} joined.`);
  renderRoster();
}

function memberLeft(msg) {
  S.roster.delete(msg.member.id);
  const why = {
    kicked: ' (removed by the host)',
    timeout: ' (connection timed out)',
    'slow consumer': ' (connection too slow)',
  };
  if (msg.reason !== 'replaced') note(`${msg.member.name} left${why[msg.reason] || ''}.`);
  renderRoster();
}

function memberUpdated(msg) {
  const before = S.roster.get(msg.member.id);
  const extra = {};  // hands and asks come in `changes`; the record keeps the rest
  for (const key of ['hand', 'ask_unmute']) if (msg.changes && key in msg.changes) extra[key] = msg.changes[key];
  S.roster.set(msg.member.id, { ...(before || {}), ...msg.member, ...extra });
  S.names.set(msg.member.id, msg.member.name);
  if (msg.member.id === S.me.id) S.me = { ...S.me, ...msg.member, ...extra };
  if (msg.changes && 'name' in msg.changes && before) note(`${before.name} is now ${msg.member.name}.`);
  if (msg.by && msg.member.id === S.me.id) {
    const who = byWhom(msg.by);
    if (msg.changes.mic === false) note(`${who[0].toUpperCase()}${who.slice(1)} muted you.`, 'controls');
    if (msg.changes.camera === false) note(`${who[0].toUpperCase()}${who.slice(1)} turned your camera off.`, 'controls');
    if ('hand' in msg.changes) note(`${who[0].toUpperCase()}${who.slice(1)} lowered your hand.`, 'controls');
  }
  renderRoster();
  renderMe();
}

function byWhom(by) {
  if (S.me && by === S.me.id) return 'you';
  if (by === 'host') return 'the host (API)';
  if (by === 'operator') return 'an operator';
  if (by === 'timer') return 'the timer';
  return S.names.get(by) || 'a host';
}

function controlsChanged(ev) {
  if (ev.revision < S.revision) return;  // older than what the page shows
  const fresh = ev.revision > S.revision;
  if (fresh) { S.controls = { ...ev.controls }; S.revision = ev.revision; }
  if (fresh) applyModeration(ev);
  for (const [flag, value] of Object.entries(ev.changed || {})) {
    S.who[flag] = { by: ev.by, at: serverNow(), revision: ev.revision };
    if (ev.expires_at) S.expires[flag] = ev.expires_at; else delete S.expires[flag];
    S.pendingFlags.delete(flag);
    if (fresh) {
      const who = byWhom(ev.by);
      const until = ev.expires_at ? ` for ${lasting(ev.expires_at - serverNow())}` : '';
      note(`${who[0].toUpperCase()}${who.slice(1)} ${SAID[flag][value ? 0 : 1]}${until}.`, 'controls');
    }
  }
  renderControls();
  renderMe();
}

// a room switch off turns every device off; members' own flags, roles and the host come here too
function applyModeration(ev) {
  for (const device of ['camera', 'mic']) {
    if ((ev.changed || {})[device] === false) for (const id of S.roster.keys()) setMember(id, { [device]: false });
  }
  for (const [id, flags] of Object.entries(ev.members || {})) {
    const own = { ...(S.memberControls[id] || {}) };
    for (const [flag, value] of Object.entries(flags)) {
      if (flag === 'cohost') {
        const m = S.roster.get(id);
        if (m && m.role !== 'host') setMember(id, { role: value ? 'cohost' : 'member' });
        if (S.me && id === S.me.id) note(value ? 'You are now a co-host.' : 'You are no longer a co-host.', 'controls');
        continue;
      }
      if (value === null) delete own[flag]; else own[flag] = value;
      if ((flag === 'camera' || flag === 'mic') && value === false) setMember(id, { [flag]: false });
    }
    S.memberControls[id] = own;
  }
  if (ev.host) {
    for (const [id, m] of S.roster) if (m.role === 'host' && id !== ev.host) setMember(id, { role: 'member' });
    setMember(ev.host, { role: 'host' });
    note(ev.host === (S.me && S.me.id) ? 'You are now the host.' : `${S.names.get(ev.host) || 'A member'} is now the host.`, 'controls');
  }
  renderRole();
  renderRoster();
}

function renderRole() {  // what this member may do, after a welcome or a role change
  if (!S.me) return;
  $('duration-row').hidden = !moderator();
  $('host-tools').hidden = !isHost();
  say('controls-note', moderator() ? '' : 'Only the host can change these.');
}

async function loadAudit() {  // the host may read who changed each flag last
  try {
    const path = `/v1/meetings/${encodeURIComponent(S.meetingId)}/audit`;
    const audit = await apiJson(path, { headers: hostHeaders() });
    for (const entry of audit.entries) {
      if (entry.revision > S.revision) continue;
      const known = S.who[entry.flag];
      if (known && known.revision >= entry.revision) continue;
      S.who[entry.flag] = { by: entry.by, at: Date.parse(entry.at) / 1000, revision: entry.revision };
    }
    renderControls();
  } catch (err) {
    say('controls-error', `Could not read who changed the controls: ${err.message}`);
  }
}

// --- rendering ------------------------------------------------------------------------------

function renderAll() { renderMe(); renderRoster(); renderControls(); renderLobby(); }

function renderMe() {
  if (!S.me) return;
  say('me-name', S.me.name);
  say('me-role', S.me.role === 'host' ? 'host' : S.me.role === 'cohost' ? 'co-host' : '');
  $('me-role').hidden = S.me.role === 'member';
  $('hand-toggle').setAttribute('aria-pressed', String(Boolean(S.me.hand)));
  $('hand-toggle').textContent = S.me.hand ? 'Lower hand' : 'Raise hand';
  const blocked = !may(S.me.id, 'mic');  // may not unmute: it may ask
  $('ask-unmute').hidden = !blocked;
  $('ask-unmute').textContent = S.me.ask_unmute ? 'Asked to unmute…' : 'Ask to unmute';
  $('ask-unmute').disabled = Boolean(S.me.ask_unmute);
  const toggles = [['camera', $('camera-toggle'), 'Camera'], ['mic', $('mic-toggle'), 'Mic']];
  for (const [flag, button, label] of toggles) {
    const on = Boolean(S.me[flag]);
    button.setAttribute('aria-pressed', String(on));
    button.textContent = `${label} ${on ? 'on' : 'off'}`;
    button.dataset.forbidden = String(!may(S.me.id, flag));
    button.title = may(S.me.id, flag) ? '' : `The host does not allow your ${flag === 'mic' ? 'microphone' : flag} now`;
  }
  if (document.activeElement !== $('rename-input')) $('rename-input').value = S.me.name;
}

function renderRoster() {
  const list = $('roster');
  const rank = { host: 0, cohost: 1, member: 2 };
  const people = [...S.roster.values()].sort((a, b) =>
    (rank[a.role] ?? 2) - (rank[b.role] ?? 2) || a.joined_at - b.joined_at);
  list.replaceChildren(...people.map((m) => {
    const isMe = S.me && m.id === S.me.id;
    const menu = memberMenu(m, isMe);
    return el('li', { 'data-member': m.id },
      el('span', { class: 'name' }, m.name, isMe ? el('span', { class: 'muted' }, ' (you)') : null),
      m.role === 'host' ? el('span', { class: 'badge' }, 'host') : null,
      m.role === 'cohost' ? el('span', { class: 'badge' }, 'co-host') : null,
      m.hand ? el('span', { class: 'badge hand', title: 'hand raised' }, '✋') : null,
      m.ask_unmute ? el('span', { class: 'badge ask' }, 'asks to unmute') : null,
      device('camera', 'cam', m.camera), device('microphone', 'mic', m.mic),
      menu,
      menu ? el('button', {
        type: 'button', class: 'small danger', 'aria-label': `Remove ${m.name}`, onclick: () => kick(m),
      }, 'Remove') : null);
  }));
  say('people-count', `(${people.length})`);
  const hands = people.filter((m) => m.hand).sort((a, b) => a.hand - b.hand);
  $('hands').replaceChildren(...hands.map((m) => el('li', { 'data-member': m.id }, m.name)));
  $('hands-card').hidden = !hands.length;
  $('lower-all').hidden = !moderator();
}

// the host's (and co-hosts') menu on one member
function memberMenu(m, isMe) {
  if (!moderator() || isMe || m.role === 'host' || (m.role === 'cohost' && !isHost())) return null;
  const own = S.memberControls[m.id] || {};
  const item = (label, action, frame) => el('button', {
    type: 'button', class: 'small', role: 'menuitem', onclick: () => moderate(frame, action),
  }, label);
  const block = (flag, label) => (own[flag] === false
    ? item(`Allow ${label}`, `allow ${label}`, { type: 'member_controls', member_id: m.id, controls: { [flag]: null } })
    : item(`Block ${label}`, `block ${label}`, { type: 'member_controls', member_id: m.id, controls: { [flag]: false } }));
  const items = [
    item('Mute', 'mute', { type: 'turn_off', member_id: m.id, device: 'mic' }),
    item('Camera off', 'turn the camera off', { type: 'turn_off', member_id: m.id, device: 'camera' }),
    block('mic', 'unmuting'), block('camera', 'camera'), block('chat', 'chat'), block('rename', 'renaming'),
  ];
  if (m.ask_unmute) {
    items.push(item('Allow to unmute', 'allow', { type: 'answer_unmute', member_id: m.id, allow: true }),
      item('Deny unmute', 'deny', { type: 'answer_unmute', member_id: m.id, allow: false }));
  }
  if (m.hand) items.push(item('Lower hand', 'lower the hand', { type: 'lower_hand', member_id: m.id }));
  if (isHost()) {
    items.push(m.role === 'cohost'
      ? item('Demote to member', 'demote', { type: 'set_role', member_id: m.id, role: 'member' })
      : item('Make co-host', 'promote', { type: 'set_role', member_id: m.id, role: 'cohost' }));
    items.push(el('button', {
      type: 'button', class: 'small', role: 'menuitem', onclick: () => {
        if (confirm(`Make ${m.name} the host? You will no longer be the host.`)) {
          moderate({ type: 'hand_over', member_id: m.id }, 'hand over');
        }
      },
    }, 'Make host'));
  }
  return el('details', { class: 'member-menu' },
    el('summary', { 'aria-label': `Actions for ${m.name}` }, '⋯'),
    el('div', { class: 'menu', role: 'menu' }, ...items));
}

function device(what, short, on) {
  const state = `${what} ${on ? 'on' : 'off'}`;
  return el('span', { class: `dev ${on ? 'on' : 'off'}`, title: state, 'aria-label': state, role: 'img' },
    short);
}

function renderControls() {
  const list = $('controls');
  if (!list.children.length) {
    for (const flag of FLAGS) {
      const input = el('input', {
        type: 'checkbox', role: 'switch', id: `flag-${flag}`, 'aria-describedby': `flag-${flag}-info`,
      });
      input.addEventListener('change', () => setFlag(flag, input.checked));
      list.append(el('li', { class: 'control', 'data-flag': flag },
        el('div', { class: 'control-main' },
          el('label', { for: `flag-${flag}` },
            LABELS[flag][0], el('span', { class: 'muted hint' }, LABELS[flag][1])),
          input),
        el('p', { class: 'control-info', id: `flag-${flag}-info` },
          el('span', { class: 'state' }), el('span', { class: 'who' }), el('span', { class: 'timer' }))));
    }
  }
  const host = moderator();
  for (const flag of FLAGS) {
    const item = list.querySelector(`[data-flag="${flag}"]`);
    const input = item.querySelector('input');
    const pending = S.pendingFlags.has(flag);
    input.disabled = !host;
    if (!pending) input.checked = Boolean(S.controls[flag]);
    item.dataset.pending = String(pending);
    item.querySelector('.state').textContent = S.controls[flag] ? 'On' : 'Off';
    const who = S.who[flag];
    item.querySelector('.who').textContent = who === null ? ' · changed while you were away'
      : who ? ` · by ${byWhom(who.by)} at ${clock(who.at)}` : '';
  }
  renderTimers();
}

function renderTimers() {
  for (const flag of FLAGS) {
    const span = document.querySelector(`[data-flag="${flag}"] .timer`);
    if (!span) return;
    const at = S.expires[flag];
    const left = at ? at - serverNow() : 0;
    span.textContent = at ? ` · back to ${DEFAULTS[flag] ? 'on' : 'off'} in ${countdown(left)}` : '';
    span.parentElement.parentElement.dataset.timed = String(Boolean(at));
  }
}

function tick() {
  renderTimers();
  if (S.retryTimer) {
    const left = Math.max(0, Math.ceil((S.retryAt - Date.now()) / 1000));
    status(left ? `Connection lost. Reconnecting in ${left} s…` : 'Reconnecting…', 'offline');
  }
}

// --- what the user does ---------------------------------------------------------------------

function setFlag(flag, value) {
  say('controls-error', '');
  const frame = { type: 'set_controls', controls: { [flag]: value }, expected_revision: S.revision };
  const minutes = parseFloat($('duration').value);
  if (minutes > 0) frame.duration = Math.min(86400, Math.round(minutes * 60000) / 1000);
  $('duration').value = '';  // a timed change is for this switch only
  S.pendingFlags.add(flag);
  renderControls();
  send(frame, (reply) => {
    S.pendingFlags.delete(flag);
    if (reply.type === 'error') {
      const why = reply.code === 'revision_conflict'
        ? 'The controls changed meanwhile; look again and retry.' : `Refused: ${reply.message}`;
      say('controls-error', why);
    } else if (reply.revision > S.revision) {  // the ack came before the controls event
      controlsChanged({ controls: reply.controls, revision: reply.revision, changed: { [flag]: value },
        by: S.me.id, expires_at: frame.duration ? serverNow() + frame.duration : null });
    }
    renderControls();
  });
}

function toggleMedia(flag) {
  say('media-error', '');
  send({ type: 'media', [flag]: !S.me[flag] }, (reply) => {
    if (reply.type === 'error') { say('media-error', `Refused: ${reply.message}`); return; }
    S.me = { ...S.me, camera: reply.camera, mic: reply.mic };
    renderMe();
  });
}

function kick(member) {
  if (!confirm(`Remove ${member.name} from the meeting? They cannot come back as the same member.`)) return;
  send({ type: 'kick', member_id: member.id }, (reply) => {
    say('roster-error', reply.type === 'error' ? `Could not remove ${member.name}: ${reply.message}` : '');
  });
}

async function downloadAttendance() {
  say('host-error', '');
  try {
    const path = `/v1/meetings/${encodeURIComponent(S.meetingId)}/attendance.csv`;
    const response = await fetch(path, { headers: hostHeaders() });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    const blob = await response.blob();
    const named = (response.headers.get('Content-Disposition') || '').match(/filename="([^"]+)"/);
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: named ? named[1] : `attendance-${S.meetingId}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    say('host-error', `Could not download the attendance: ${err.message}`);
  }
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {  // no clipboard API (plain http on a LAN address): the old way
    const area = el('textarea', { class: 'visually-hidden', readonly: '' }, text);
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  const was = button.textContent;
  button.textContent = 'Copied';
  setTimeout(() => { button.textContent = was; }, 1500);
}

function wire() {
  $('chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('chat-input');
    const text = input.value;
    if (!text.trim()) return;
    say('chat-error', '');
    send({ type: 'chat', text }, (reply) => {
      if (reply.type !== 'error') return;
      say('chat-error', `Not sent: ${reply.message}`);
      if (!input.value) input.value = text;
    });
    if (S.welcomed) input.value = '';
  });
  $('camera-toggle').addEventListener('click', () => toggleMedia('camera'));
  $('hand-toggle').addEventListener('click', () => {
    say('media-error', '');
    send({ type: S.me.hand ? 'lower_hand' : 'raise_hand' }, (reply) => {
      if (reply.type === 'error') say('media-error', `Refused: ${reply.message}`);
    });
  });
  $('ask-unmute').addEventListener('click', () => {
    say('media-error', '');
    send({ type: 'ask_unmute' }, (reply) => {
      if (reply.type === 'error') say('media-error', `Refused: ${reply.message}`);
    });
  });
  $('lower-all').addEventListener('click', () => moderate({ type: 'lower_hands' }, 'lower the hands'));
  $('mic-toggle').addEventListener('click', () => toggleMedia('mic'));
  $('rename-form').addEventListener('submit', (event) => {
    event.preventDefault();
    say('rename-error', '');
    send({ type: 'rename', name: $('rename-input').value }, (reply) => {
      if (reply.type === 'error') say('rename-error', `Refused: ${reply.message}`);
      else localStorage.setItem('rmeeting.name', reply.name);
    });
  });
  $('download-attendance').addEventListener('click', downloadAttendance);
  $('admit-all').addEventListener('click', () => decide('admit', { all: true }));
  $('refuse-all').addEventListener('click', () => decide('refuse', { all: true }));
  $('end-meeting').addEventListener('click', () => {
    if (!confirm('End the meeting for everyone?')) return;
    send({ type: 'end' }, (reply) => {
      if (reply.type === 'error') say('host-error', `Could not end it: ${reply.message}`);
    });
  });
  $('copy-invite').addEventListener('click', (event) => copy($('invite-link').value, event.currentTarget));
  $('copy-host').addEventListener('click', (event) => copy(S.hostLink, event.currentTarget));
  $('over-rejoin').addEventListener('click', () => {
    S.joinedOnce = Boolean(S.token);
    show('room');
    connect();
  });
  window.addEventListener('online', () => { if (S.retryTimer) connect(); });
  window.addEventListener('pagehide', () => { S.leaving = true; if (S.ws) S.ws.close(1000); });
  window.addEventListener('pageshow', (event) => {  // back from the back/forward cache
    if (event.persisted && S.joinedOnce && S.leaving) { S.leaving = false; connect(); }
  });
  setInterval(tick, 1000);
}

wire();
const path = location.pathname.match(/^\/m\/([A-Za-z0-9_.-]{1,64})\/?$/);
if (path) meetingPage(path[1]); else startPage();
