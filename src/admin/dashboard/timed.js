// The "Schedules and polls" card: for each schedule and poll trigger its next fire times, last
// fire, counters (from the trigger view's `source_status`) and saved state (GET
// /api/triggers/{name}/state), with an editor that replaces the state (PUT, the same call as
// `millgate state set`).
//
// app.js passes in its helpers, so this file has no state of its own beyond the card.

/** Counters shown per kind: [key in source_status, label, what it counts]. */
const COUNTERS = {
  schedule: [
    ['missed', 'missed', 'fire times missed while millgate was down, outside catch_up_window'],
    ['skipped', 'skipped', 'fire times skipped because the previous job was still running (overlap)'],
    ['skipped_paused', 'paused', 'fire times skipped while paused'],
  ],
  poll: [
    ['polls', 'polls', 'polls since millgate started'],
    ['skipped_polls', 'empty', 'polls that returned no items'],
    ['poll_failures', 'failed', 'polls whose runnable failed'],
    ['malformed_polls', 'malformed', 'polls whose output was not {"items": [...], "state": ...}'],
  ],
};
/** Counters that mean something went wrong, highlighted when not zero. */
const WARNS = new Set(['missed', 'poll_failures', 'malformed_polls']);
/** The state's JSON is cut in the table; the editor shows all of it. */
const STATE_PREVIEW_CHARS = 120;
/** At most this many states are fetched per refresh. */
const MAX_STATES = 50;

export function createTimedView({ h, api, say, byTestId, fmtTime, errorText, enc }) {
  const states = new Map(); // trigger name -> saved state (undefined: not loaded)
  let timed = [];
  let editing = null; // trigger whose state is in the editor

  const card = byTestId('timed-card');
  const body = card.querySelector('tbody');

  /** A time cell: local time shown, the RFC 3339 value in `data-at` and the tooltip. */
  function timeCell(iso, testid, extra) {
    return h('td', { testid, 'data-at': iso || '', title: [iso, extra].filter(Boolean).join('\n') },
      iso ? fmtTime(iso) : '—');
  }

  function row(t) {
    const n = t.name;
    const s = (t.source_status && typeof t.source_status === 'object') ? t.source_status : {};
    const next = Array.isArray(s.next_fires) ? s.next_fires : [];
    const counters = (COUNTERS[t.kind] || []).map(([key, label, title]) => h('span',
      { class: `counter ${WARNS.has(key) && s[key] > 0 ? 'warn' : ''}`, title },
      `${label} `, h('strong', { testid: `timed-${key}-${n}` }, s[key] ?? 0)));
    const state = states.get(n);
    const stateText = state === undefined ? '…' : JSON.stringify(state);
    const flags = [];
    if (s.paused) flags.push(h('span', { class: 'badge st-suspended', testid: `timed-paused-${n}` }, 'paused'));
    if (s.running) flags.push(h('span', { class: 'muted small' }, ` ${s.running} running`));
    if (s.buffered) flags.push(h('span', { class: 'muted small', title: s.buffered }, ' 1 buffered'));
    return h('tr', { testid: `timed-row-${n}` },
      h('td', {}, h('span', { class: 'name' }, n), ' ', h('span', { class: 'tag' }, t.kind), ...flags),
      timeCell(next[0], `timed-next-${n}`, next.length > 1 ? `then ${next.slice(1).join(', ')}` : ''),
      timeCell(s.last_fire, `timed-last-${n}`),
      h('td', { class: 'counters' }, counters,
        s.last_poll_error ? h('div', { class: 'error small', testid: `timed-error-${n}` }, s.last_poll_error) : null),
      h('td', { class: 'mono small clip', title: stateText, testid: `timed-state-${n}` },
        stateText.length > STATE_PREVIEW_CHARS ? `${stateText.slice(0, STATE_PREVIEW_CHARS)}…` : stateText),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small secondary', testid: `btn-edit-state-${n}`, onclick: () => edit(n) }, 'Edit state')),
    );
  }

  function render() {
    card.hidden = timed.length === 0;
    body.replaceChildren(...timed.map(row));
  }

  async function loadStates() {
    await Promise.all(timed.slice(0, MAX_STATES).map(async (t) => {
      try {
        const r = await api('GET', `api/triggers/${enc(t.name)}/state`);
        states.set(t.name, r.state);
      } catch (err) {
        states.delete(t.name);
      }
    }));
    render();
  }

  function edit(name) {
    editing = name;
    const editor = byTestId('state-editor');
    editor.hidden = false;
    byTestId('state-editor-name').textContent = name;
    const state = states.get(name);
    byTestId('state-text').value = state === undefined ? '' : JSON.stringify(state, null, 2);
    say('state-ok', '');
    say('state-error', '');
    byTestId('state-text').focus();
  }

  function close() {
    editing = null;
    byTestId('state-editor').hidden = true;
  }

  async function save(event) {
    event.preventDefault();
    if (!editing) return;
    const name = editing;
    const text = byTestId('state-text').value;
    say('state-ok', '');
    say('state-error', '');
    try {
      JSON.parse(text);
    } catch (err) {
      say('state-error', `not JSON: ${err.message}`);
      return;
    }
    try {
      const r = await api('PUT', `api/triggers/${enc(name)}/state`, { body: text, contentType: 'application/json' });
      states.set(name, r.state);
      byTestId('state-text').value = JSON.stringify(r.state, null, 2);
      render();
      say('state-ok', `State of ${name} saved.`);
    } catch (err) {
      say('state-error', errorText(err));
    }
  }

  byTestId('state-form').addEventListener('submit', save);
  byTestId('state-cancel').addEventListener('click', close);

  return {
    /** The trigger list changed: show its schedules and polls, then their saved states. */
    update(triggers) {
      timed = triggers.filter((t) => t.timed);
      for (const name of states.keys()) {
        if (!timed.some((t) => t.name === name)) states.delete(name);
      }
      if (editing && !timed.some((t) => t.name === editing)) close();
      render();
      loadStates();
    },
  };
}
