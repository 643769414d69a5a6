// The staff's live fulfillment queue. One WebSocket (/staff/queue/ws, signed in by the session
// cookie: this script never sees a token) brings a snapshot, then every change as fulfillment
// commits it; the list is drawn again from that state after each. Queued orders can be
// reordered by drag and drop or by their buttons (keyboard and screen readers), claimed,
// advanced and removed; what others do appears as it happens. The socket reconnects by itself
// with a growing pause, resuming after the last change it saw.
const list = document.getElementById('queue');
const status = document.getElementById('queue-status');
const tasks = new Map();
// The queued tasks' ids in their order. Fulfillment sends a change for the task that moved
// alone; the others' places follow from this list.
let line = [];
let seq = null;
let socket = null;
let attempt = 0;
let requests = 0;

const OPEN = ['QUEUED', 'PICKING', 'PACKED'];
const NEXT = { PICKING: 'Mark packed', PACKED: 'Mark shipped' };

function say(text) {
  status.textContent = text;
}

function connect() {
  const url = new URL('/staff/queue/ws', window.location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  socket = new WebSocket(url);
  socket.addEventListener('open', () => {
    socket.send(JSON.stringify(seq === null ? { type: 'auth' } : { type: 'auth', last_seq: seq }));
  });
  socket.addEventListener('message', (event) => receive(JSON.parse(event.data)));
  socket.addEventListener('close', (event) => {
    if (event.code === 4403) {
      say('The queue is for staff.');
      return;
    }
    if (event.code === 1013) seq = null; // fell behind: start again from a snapshot
    const wait = Math.min(30000, 500 * 2 ** attempt);
    attempt += 1;
    say(`Disconnected; connecting again in ${Math.round(wait / 1000)} s…`);
    window.setTimeout(connect, wait);
  });
}

function receive(message) {
  switch (message.type) {
    case 'snapshot':
      tasks.clear();
      for (const task of message.tasks) tasks.set(task.id, task);
      line = message.tasks.filter((t) => t.state === 'QUEUED').sort((a, b) => a.position - b.position).map((t) => t.id);
      seq = message.seq;
      attempt = 0;
      say(`Live: ${countOpen()} orders to fulfil.`);
      break;
    case 'task_added':
    case 'task_moved':
    case 'task_updated':
    case 'task_removed': {
      const task = message.task;
      line = line.filter((id) => id !== task.id);
      if (message.type === 'task_removed') {
        tasks.delete(task.id);
      } else {
        tasks.set(task.id, task);
        if (task.state === 'QUEUED') line.splice(Math.min(task.position ?? line.length, line.length), 0, task.id);
      }
      seq = message.seq;
      attempt = 0;
      if (message.type === 'task_added') say(`New order ${short(task.order_id)} in the queue.`);
      break;
    }
    case 'error':
      say(`Not done: ${message.message}`);
      return;
    default:
      return; // acks: the change itself comes as its own message
  }
  draw();
}

function countOpen() {
  return [...tasks.values()].filter((t) => OPEN.includes(t.state)).length;
}

/** The last 8 characters of an id: its random part (the first ones are a timestamp). */
function short(id) {
  return id.slice(-8);
}

/** Queued tasks in their order (each with its place in line), then the ones being worked on. */
function ordered() {
  const queued = line.map((id, at) => ({ ...tasks.get(id), position: at }));
  const working = [...tasks.values()]
    .filter((t) => t.state !== 'QUEUED' && OPEN.includes(t.state))
    .sort((a, b) => a.created_at.localeCompare(b.created_at));
  return [...queued, ...working];
}

function send(type, task, extra = {}) {
  requests += 1;
  socket?.send(JSON.stringify({ type, request_id: String(requests), task_id: task.id, version: task.version, ...extra }));
}

function button(label, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.addEventListener('click', onClick);
  return b;
}

function draw() {
  const focused = document.activeElement?.dataset?.action;
  const focusedTask = document.activeElement?.closest?.('li.task')?.dataset.taskId;
  list.replaceChildren();
  const queuedCount = ordered().filter((t) => t.state === 'QUEUED').length;
  for (const task of ordered()) {
    const item = document.createElement('li');
    item.className = 'task';
    item.dataset.taskId = task.id;
    item.dataset.state = task.state;
    const name = `Order ${short(task.order_id)}`;
    const title = document.createElement('strong');
    title.textContent = name;
    const state = document.createElement('span');
    state.className = 'state';
    state.textContent = task.state;
    const lines = document.createElement('ul');
    for (const line of task.lines) {
      const li = document.createElement('li');
      li.textContent = `${line.quantity} × ${line.title}`;
      lines.append(li);
    }
    const actions = document.createElement('div');
    actions.className = 'actions';
    if (task.state === 'QUEUED') {
      item.draggable = true;
      const at = task.position;
      const move = (label, action, position, enabled) => {
        const b = button(label, () => send('move', task, { position }));
        b.dataset.action = action;
        b.disabled = !enabled;
        b.setAttribute('aria-label', `${label}: ${name}`);
        actions.append(b);
      };
      move('Move to top', 'top', 0, at > 0);
      move('Move up', 'up', at - 1, at > 0);
      move('Move down', 'down', at + 1, at < queuedCount - 1);
      const claim = button('Claim', () => send('claim', task));
      claim.dataset.action = 'claim';
      claim.setAttribute('aria-label', `Claim ${name}`);
      actions.append(claim);
    } else if (NEXT[task.state]) {
      const advance = button(NEXT[task.state], () => send('advance', task));
      advance.dataset.action = 'advance';
      advance.setAttribute('aria-label', `${NEXT[task.state]}: ${name}`);
      actions.append(advance);
    }
    const remove = button('Remove', () => {
      const reason = window.prompt(`Why remove ${name}?`);
      if (reason) send('remove', task, { reason });
    });
    remove.dataset.action = 'remove';
    remove.setAttribute('aria-label', `Remove ${name}`);
    actions.append(remove);
    item.append(title, ' · ', state, lines, actions);
    list.append(item);
    if (task.id === focusedTask && focused) {
      const again = item.querySelector(`[data-action="${focused}"]:not([disabled])`) ?? item.querySelector('button:not([disabled])');
      again?.focus();
    }
  }
}

// Drag and drop: a queued order dropped on another queued one takes its place.
let dragged = null;
list.addEventListener('dragstart', (event) => {
  dragged = event.target.closest('li.task')?.dataset.taskId ?? null;
  event.dataTransfer?.setData('text/plain', dragged ?? '');
});
list.addEventListener('dragover', (event) => {
  if (event.target.closest('li.task[data-state="QUEUED"]')) event.preventDefault();
});
list.addEventListener('drop', (event) => {
  event.preventDefault();
  const target = event.target.closest('li.task')?.dataset.taskId;
  const task = tasks.get(dragged);
  if (task && target && task.id !== target && line.includes(target)) {
    send('move', task, { position: line.indexOf(target) });
  }
  dragged = null;
});

say('Connecting…');
connect();
