// The millgate dashboard: plain DOM, no framework, no build step.
//
// It asks for the admin token once (kept in sessionStorage), calls the admin API with
// `Authorization: Bearer`, and follows `/api/events` (Server-Sent Events) to keep the lists
// current without reloading. Every piece of data is inserted as text (textContent /
// createTextNode), never as HTML.

import { createTimedView } from './timed.js';

const TOKEN_KEY = 'millgate.adminToken';
const JOBS_LIMIT = 50;
/** Trigger views (rate, counters) drift without events: refreshed this often. */
const TRIGGERS_POLL_MS = 10000;
/** Several SSE messages in a burst cause one reload of a list. */
const RELOAD_DELAY_MS = 150;

const EVENT_TYPES = [
  'event_received', 'event_filtered', 'event_duplicate',
  'job_queued', 'job_parked', 'job_started', 'job_retrying', 'job_succeeded',
  'job_dead_lettered', 'job_cancelled', 'trigger_state', 'lagged',
];
/** The status a job has once the SSE message of this type arrived. */
const STATUS_AFTER = {
  job_queued: 'queued', job_parked: 'parked', job_started: 'running', job_retrying: 'retrying',
  job_succeeded: 'succeeded', job_dead_lettered: 'dead_lettered', job_cancelled: 'cancelled',
};
const FINAL = new Set(['succeeded', 'dead_lettered', 'cancelled']);

const state = {
  token: null,
  triggers: [],
  jobs: [],
  deadLetters: [],
  selectedJob: null, // job id shown in the detail panel
  detail: null, // its full view
  events: null, // EventSource
  pollTimer: null,
};

// ---------------------------------------------------------------- helpers

const $ = (selector) => document.querySelector(selector);
const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

/**
 * Creates an element. `attrs`: `testid`, `class`, `on<event>` handlers, booleans, strings.
 * Children are nodes or values inserted as text.
 */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'testid') el.dataset.testid = value;
    else if (key === 'class') el.className = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Shows `message` in the element of test id `id` (hidden when the message is empty). */
function say(id, message) {
  const el = byTestId(id);
  el.textContent = message || '';
  el.hidden = !message;
}

function errorText(err) {
  if (err instanceof ApiError) {
    return err.status ? `${err.status} ${err.code}: ${err.message}` : err.message;
  }
  return String(err && err.message ? err.message : err);
}

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return '';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

function fmtUptime(secs) {
  const d = Math.floor(secs / 86400);
  const hh = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = Math.floor(secs % 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function fmtRate(rate) {
  if (typeof rate !== 'number') return '';
  return rate === 0 ? '0' : rate < 0.01 ? '<0.01' : rate.toFixed(2);
}

function json(value) {
  return value === undefined ? '' : JSON.stringify(value, null, 2);
}

function badge(status, testid) {
  const s = String(status ?? 'unknown');
  return h('span', { class: `badge st-${s}`, testid, 'data-status': s }, s);
}

/** Replaces a tbody's rows, keeping the row elements whose data did not change. */
function syncRows(tbody, items, key, render) {
  const old = new Map();
  for (const row of tbody.children) old.set(row.dataset.key, row);
  const rows = items.map((item) => {
    const sig = JSON.stringify(item);
    const prev = old.get(key(item));
    if (prev && prev.dataset.sig === sig) return prev;
    const row = render(item);
    row.dataset.key = key(item);
    row.dataset.sig = sig;
    return row;
  });
  tbody.replaceChildren(...rows);
}

/**
 * Wraps a loader so that calls close together run once, and only the newest answer is
 * applied (an older, slower answer is dropped).
 */
function reloader(load, apply) {
  let timer = null;
  let generation = 0;
  const run = async () => {
    timer = null;
    const mine = ++generation;
    try {
      const data = await load();
      if (mine === generation) apply(data);
      say('global-error', '');
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) say('global-error', errorText(err));
    }
  };
  return {
    now: run,
    soon() {
      if (!timer) timer = setTimeout(run, RELOAD_DELAY_MS);
    },
  };
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, { body, contentType } = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = contentType || 'application/json';
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, cache: 'no-store' });
  } catch (err) {
    throw new ApiError(0, 'network', `cannot reach millgate (${err.message})`);
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!resp.ok) {
    const e = (data && typeof data === 'object' && data.error) || {};
    const message = e.message || (typeof data === 'string' && data.trim()) || resp.statusText;
    const err = new ApiError(resp.status, e.code || `http_${resp.status}`, message);
    if (resp.status === 401 && state.token) unauthorized();
    throw err;
  }
  return data;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- token

function showLogin(message) {
  $('#main').hidden = true;
  $('#login').hidden = false;
  $('#forget-token').hidden = true;
  say('token-error', message);
  $('#token-input').focus();
}

function unauthorized() {
  stopLive();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin('The admin token was refused (401). Enter it again.');
}

async function login(token) {
  state.token = token;
  try {
    await api('GET', 'api/triggers');
  } catch (err) {
    state.token = null;
    showLogin(err instanceof ApiError && err.status === 401
      ? 'This token is refused by millgate (401).'
      : errorText(err));
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#login').hidden = true;
  $('#main').hidden = false;
  $('#forget-token').hidden = false;
  say('token-error', '');
  startLive();
}

// ---------------------------------------------------------------- triggers

const triggers = reloader(
  () => api('GET', 'api/triggers'),
  (data) => {
    state.triggers = data.triggers || [];
    renderTriggers();
  },
);

function upsertTrigger(view) {
  const i = state.triggers.findIndex((t) => t.name === view.name);
  if (i >= 0) state.triggers[i] = view;
  else state.triggers.push(view);
  state.triggers.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  renderTriggers();
}

function renderTriggers() {
  const list = state.triggers;
  syncRows($('#triggers-body'), list, (t) => t.name, triggerRow);
  timedView.update(list);
  byTestId('triggers-empty').hidden = list.length > 0;
  byTestId('triggers-count').textContent = list.length ? `${list.length}` : '';
  // The job list's trigger filter follows the trigger names.
  const select = $('#jobs-trigger');
  const names = list.map((t) => t.name);
  const current = [...select.options].slice(1).map((o) => o.value);
  if (JSON.stringify(names) !== JSON.stringify(current)) {
    const chosen = select.value;
    select.replaceChildren(h('option', { value: '' }, 'all'), ...names.map((n) => h('option', { value: n }, n)));
    select.value = names.includes(chosen) ? chosen : '';
  }
}

function triggerRow(t) {
  const n = t.name;
  const counters = t.counters || {};
  const stateCell = h('td', {},
    badge(t.state, `trigger-state-${n}`),
    t.parked ? h('span', { class: 'muted small', testid: `trigger-parked-${n}` }, ` ${t.parked} parked`) : null,
  );
  if (t.state === 'backing_off' && t.last_error) {
    stateCell.append(h('div', { class: 'error small', testid: `trigger-last-error-${n}` }, t.last_error));
    if (t.next_attempt) stateCell.append(h('div', { class: 'muted small' }, `next attempt ${fmtTime(t.next_attempt)}`));
  }
  const action = (verb, label, enabled, title) => h('button', {
    type: 'button',
    class: verb === 'delete' ? 'small danger' : 'small secondary',
    testid: `btn-${verb}-${n}`,
    disabled: !enabled,
    title,
    onclick: () => triggerAction(n, verb),
  }, label);
  const isConfig = t.source === 'config';
  return h('tr', { testid: `trigger-row-${n}` },
    h('td', {},
      h('span', { class: 'name' }, n),
      ' ',
      h('span', { class: `tag tag-${t.source}`, title: isConfig ? 'defined in config.toml' : 'added through the API' }, t.source),
    ),
    h('td', {}, t.kind),
    h('td', {}, t.mode ?? ''),
    stateCell,
    h('td', { class: 'num', testid: `trigger-rate-${n}` }, fmtRate(t.rate_1m)),
    h('td', { class: 'num', testid: `trigger-inflight-${n}` }, t.in_flight ?? 0),
    h('td', { class: `num ${counters.jobs_dead_lettered ? 'error' : ''}`, testid: `trigger-errors-${n}` }, counters.jobs_dead_lettered ?? 0),
    h('td', { class: 'num', testid: `trigger-restarts-${n}` }, t.restarts ?? 0),
    h('td', { class: 'actions' },
      action('enable', 'Enable', !t.enabled),
      action('disable', 'Disable', t.enabled),
      action('suspend', 'Suspend', !t.suspended, 'keep receiving events; park their jobs'),
      action('resume', 'Resume', t.suspended, 'run the parked jobs'),
      t.parked ? action('cancel-parked', 'Drop parked', true, 'cancel the parked jobs') : null,
      action('delete', 'Delete', !isConfig, isConfig ? 'defined in config.toml: change it there' : null),
    ),
  );
}

async function triggerAction(name, verb) {
  say('trigger-action-error', '');
  try {
    if (verb === 'delete') {
      if (!window.confirm(`Delete trigger ${name}?`)) return;
      await api('DELETE', `api/triggers/${enc(name)}`);
      state.triggers = state.triggers.filter((t) => t.name !== name);
      renderTriggers();
    } else if (verb === 'cancel-parked') {
      await api('POST', `api/triggers/${enc(name)}/parked/cancel`);
      triggers.soon();
      jobs.soon();
    } else {
      upsertTrigger(await api('POST', `api/triggers/${enc(name)}/${verb}`));
    }
  } catch (err) {
    say('trigger-action-error', `${name}: ${errorText(err)}`);
  }
}

// ---------------------------------------------------------------- add a trigger

/** JSON when the text is an object literal, TOML otherwise. */
function formatOf(text) {
  return text.trimStart().startsWith('{') ? 'json' : 'toml';
}

function showFormat() {
  const text = $('#add-trigger-text').value;
  byTestId('add-trigger-format').textContent = text.trim() ? `sent as ${formatOf(text).toUpperCase()}` : '';
}

async function addTrigger(event) {
  event.preventDefault();
  const area = $('#add-trigger-text');
  const text = area.value;
  say('add-trigger-error', '');
  say('add-trigger-ok', '');
  if (!text.trim()) {
    say('add-trigger-error', 'Write a trigger first (JSON object or TOML).');
    return;
  }
  const contentType = formatOf(text) === 'json' ? 'application/json' : 'application/toml';
  const button = byTestId('add-trigger-submit');
  button.disabled = true;
  try {
    const view = await api('POST', 'api/triggers', { body: text, contentType });
    upsertTrigger(view);
    area.value = '';
    showFormat();
    say('add-trigger-ok', `Trigger ${view.name} added.`);
  } catch (err) {
    say('add-trigger-error', errorText(err));
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- jobs

function jobsQuery() {
  const q = new URLSearchParams({ limit: String(JOBS_LIMIT) });
  if ($('#jobs-trigger').value) q.set('trigger', $('#jobs-trigger').value);
  if ($('#jobs-status').value) q.set('status', $('#jobs-status').value);
  return `api/jobs?${q}`;
}

const jobs = reloader(
  () => api('GET', jobsQuery()),
  (data) => {
    state.jobs = data.jobs || [];
    renderJobs();
  },
);

function renderJobs() {
  syncRows($('#jobs-body'), state.jobs, (j) => j.job_id, jobRow);
  byTestId('jobs-empty').hidden = state.jobs.length > 0;
  for (const row of $('#jobs-body').children) {
    row.classList.toggle('selected', row.dataset.key === state.selectedJob);
  }
}

function jobRow(j) {
  const id = j.job_id;
  return h('tr', { testid: `job-row-${id}` },
    h('td', {},
      h('button', { type: 'button', class: 'link mono', title: id, testid: `job-open-${id}`, onclick: () => selectJob(id) },
        id.slice(-12)),
      j.replay_of ? h('span', { class: 'tag', title: `replay of ${j.replay_of}` }, 'replay') : null,
    ),
    h('td', {}, j.trigger),
    h('td', {}, j.runnable),
    h('td', {}, badge(j.status, `job-status-${id}`)),
    h('td', { class: 'num' }, j.attempts ?? ''),
    h('td', { title: j.created_at || '' }, fmtTime(j.created_at)),
    h('td', { class: 'num', testid: `job-duration-${id}` }, fmtDuration(j.duration_ms)),
  );
}

/** Applies an SSE job message to the list at once; the reload that follows brings the rest. */
function applyJobEvent(type, data) {
  const job = state.jobs.find((j) => j.job_id === data.job_id);
  if (!job) return;
  job.status = STATUS_AFTER[type];
  if (typeof data.attempt === 'number') job.attempts = data.attempt;
  if (typeof data.attempts === 'number') job.attempts = data.attempts;
  if (typeof data.duration_ms === 'number') job.duration_ms = data.duration_ms;
  renderJobs();
}

// ---------------------------------------------------------------- job detail

const detail = reloader(
  () => (state.selectedJob ? api('GET', `api/jobs/${enc(state.selectedJob)}`) : null),
  (view) => {
    if (view && view.job_id === state.selectedJob) {
      state.detail = view;
      renderDetail();
    }
  },
);

function selectJob(id) {
  state.selectedJob = id;
  state.detail = null;
  say('job-detail-error-msg', '');
  renderJobs();
  $('#detail-body').replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  $('#detail-close').hidden = false;
  $('#detail-replay').hidden = true;
  detail.now();
}

function closeDetail() {
  state.selectedJob = null;
  state.detail = null;
  say('job-detail-error-msg', '');
  $('#detail-close').hidden = true;
  $('#detail-replay').hidden = true;
  $('#detail-body').replaceChildren(h('p', { class: 'muted' }, 'Select a job to see its args, result, event and timeline.'));
  renderJobs();
}

function renderDetail() {
  const j = state.detail;
  const field = (label, value, testid) => [h('dt', {}, label), h('dd', { testid }, value ?? '')];
  const block = (label, value, testid) => h('details', { open: true },
    h('summary', {}, label),
    h('pre', { testid }, json(value)));
  const timeline = h('ol', { class: 'timeline', testid: 'job-detail-timeline' },
    (j.timeline || []).map((step) => h('li', {},
      h('span', { class: 'mono muted' }, fmtTime(step.at)), ' ',
      h('strong', {}, step.step),
      step.attempt ? ` (attempt ${step.attempt})` : '',
      step.delay_ms !== undefined && step.delay_ms !== null ? ` · retry in ${fmtDuration(step.delay_ms)}` : '',
      step.error ? h('div', { class: 'error small' }, step.error) : null,
    )));
  const parts = [
    h('p', { class: 'mono', testid: 'job-detail-id' }, j.job_id),
    h('dl', { class: 'fields' },
      field('status', badge(j.status, 'job-detail-status')),
      field('trigger', j.trigger),
      field('runnable', j.runnable),
      field('attempts', j.attempts),
      field('event', j.event_id, 'job-detail-event-id'),
      field('created', fmtTime(j.created_at)),
      field('started', fmtTime(j.started_at)),
      field('finished', fmtTime(j.finished_at)),
      field('duration', fmtDuration(j.duration_ms)),
      j.replay_of ? field('replay of', h('button', { type: 'button', class: 'link mono', onclick: () => selectJob(j.replay_of) }, j.replay_of)) : null,
    ),
    j.error ? h('div', { class: 'error-box', testid: 'job-detail-error' }, typeof j.error === 'string' ? j.error : json(j.error)) : null,
    block('args', j.args, 'job-detail-args'),
    block('result', j.result, 'job-detail-result'),
    h('details', {}, h('summary', {}, 'event'), h('pre', { testid: 'job-detail-event' }, json(j.event))),
    h('h3', {}, 'Timeline'),
    timeline,
  ];
  $('#detail-body').replaceChildren(...parts.filter(Boolean));
  $('#detail-replay').hidden = !FINAL.has(j.status);
}

async function replay(id, errorTestId) {
  say(errorTestId, '');
  try {
    const r = await api('POST', `api/jobs/${enc(id)}/replay`);
    jobs.soon();
    deadLetters.soon();
    triggers.soon();
    selectJob(r.job_id);
  } catch (err) {
    say(errorTestId, `replay of ${id}: ${errorText(err)}`);
  }
}

// ---------------------------------------------------------------- dead letters

const deadLetters = reloader(
  () => api('GET', 'api/dead-letters'),
  (data) => {
    state.deadLetters = data.dead_letters || [];
    renderDeadLetters();
  },
);

function renderDeadLetters() {
  const list = state.deadLetters;
  syncRows($('#dead-body'), list, (d) => d.job_id, deadLetterRow);
  byTestId('dead-letters-empty').hidden = list.length > 0;
  byTestId('dead-letters-count').textContent = list.length ? `${list.length}` : '';
}

function deadLetterRow(d) {
  const id = d.job_id;
  return h('tr', { testid: `dead-letter-row-${id}` },
    h('td', {}, h('button', { type: 'button', class: 'link mono', title: id, onclick: () => selectJob(id) }, id.slice(-12))),
    h('td', {}, d.trigger),
    h('td', {}, d.runnable),
    h('td', { class: 'error small clip', title: d.error || '' }, d.error || ''),
    h('td', { class: 'num' }, d.attempts ?? ''),
    h('td', { title: d.dead_lettered_at || '' }, fmtTime(d.dead_lettered_at)),
    h('td', { class: 'actions' },
      h('button', { type: 'button', class: 'small', testid: `btn-replay-${id}`, onclick: () => replay(id, 'dead-letter-action-error') }, 'Replay'),
      h('button', { type: 'button', class: 'small danger', testid: `btn-discard-${id}`, onclick: () => discard(id) }, 'Discard'),
    ),
  );
}

async function discard(id) {
  say('dead-letter-action-error', '');
  if (!window.confirm(`Discard dead letter ${id}?`)) return;
  try {
    await api('DELETE', `api/dead-letters/${enc(id)}`);
    state.deadLetters = state.deadLetters.filter((d) => d.job_id !== id);
    renderDeadLetters();
  } catch (err) {
    say('dead-letter-action-error', `${id}: ${errorText(err)}`);
  }
}

// ---------------------------------------------------------------- status line

const status = reloader(
  () => api('GET', 'api/status'),
  (s) => {
    const parts = [`v${s.version}`, `up ${fmtUptime(s.uptime_secs || 0)}`];
    if (s.store) parts.push(`queue ${s.store.queue_depth}`);
    if (s.router) parts.push(`running ${s.router.running}`);
    byTestId('service-status').textContent = parts.join(' · ');
  },
);

// ---------------------------------------------------------------- live events

function setLive(live, text) {
  const el = byTestId('live-status');
  el.dataset.live = live ? 'on' : 'off';
  el.textContent = text;
}

function refreshAll() {
  triggers.now();
  jobs.now();
  deadLetters.now();
  status.now();
  if (state.selectedJob) detail.now();
}

function startLive() {
  stopLive();
  refreshAll();
  connectEvents();
  state.pollTimer = setInterval(() => {
    triggers.soon();
    status.soon();
  }, TRIGGERS_POLL_MS);
}

function stopLive() {
  if (state.events) state.events.close();
  state.events = null;
  clearInterval(state.pollTimer);
  state.pollTimer = null;
  setLive(false, 'offline');
}

function connectEvents() {
  const source = new EventSource(`api/events?token=${enc(state.token)}`);
  state.events = source;
  setLive(false, 'connecting…');
  source.onopen = () => {
    setLive(true, 'live');
    // Whatever happened while disconnected.
    refreshAll();
  };
  source.onerror = () => {
    if (state.events !== source) return;
    setLive(false, 'reconnecting…');
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. an HTTP error): check the token, then try again.
      state.events = null;
      setTimeout(async () => {
        if (!state.token || state.events) return;
        try {
          await api('GET', 'api/status');
          if (state.token && !state.events) connectEvents();
        } catch (err) {
          if (state.token && !state.events) setTimeout(() => state.token && !state.events && connectEvents(), 5000);
        }
      }, 2000);
    }
  };
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (msg) => {
      let data = {};
      try {
        data = JSON.parse(msg.data);
      } catch {
        // a message without JSON data still tells that something changed
      }
      onEvent(type, data);
    });
  }
}

function onEvent(type, data) {
  if (type === 'lagged') {
    refreshAll();
    return;
  }
  if (type.startsWith('job_')) {
    applyJobEvent(type, data);
    jobs.soon();
    if (type === 'job_dead_lettered' || type === 'job_queued') deadLetters.soon();
    if (data.job_id && data.job_id === state.selectedJob) detail.soon();
  }
  if (type === 'trigger_state') {
    const t = state.triggers.find((x) => x.name === data.trigger);
    if (data.state === 'removed') {
      state.triggers = state.triggers.filter((x) => x.name !== data.trigger);
      renderTriggers();
    } else if (t) {
      t.state = data.state;
      // The button row reads `enabled`: keep it in step with the state the stream reports,
      // which may arrive before the answer to the click that caused it.
      t.enabled = data.state !== 'disabled';
      t.last_error = data.last_error ?? null;
      renderTriggers();
    }
  }
  triggers.soon();
}

// ---------------------------------------------------------------- start

const timedView = createTimedView({ h, api, say, byTestId, fmtTime, errorText, enc });

function init() {
  $('#login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('#token-input').value.trim();
    if (token) login(token);
  });
  $('#forget-token').addEventListener('click', () => {
    stopLive();
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $('#token-input').value = '';
    showLogin('');
  });
  $('#add-form').addEventListener('submit', addTrigger);
  $('#add-trigger-text').addEventListener('input', showFormat);
  $('#add-trigger-text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) $('#add-form').requestSubmit();
  });
  $('#refresh-all').addEventListener('click', refreshAll);
  $('#jobs-trigger').addEventListener('change', () => jobs.now());
  $('#jobs-status').addEventListener('change', () => jobs.now());
  $('#detail-close').addEventListener('click', closeDetail);
  $('#detail-replay').addEventListener('click', () => state.detail && replay(state.detail.job_id, 'job-detail-error-msg'));

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) login(saved);
  else showLogin('');
}

init();
