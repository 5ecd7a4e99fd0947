// The dashboard in a real headless Chromium (Debian's), driven by playwright-core.
//
//   node e2e.mjs <admin-url> <ingress-url> [<admin-token>]
//
// or with MILLGATE_ADMIN_URL, MILLGATE_INGRESS_URL, MILLGATE_ADMIN_TOKEN. Optional:
// CHROMIUM_PATH (default /usr/bin/chromium), DASHBOARD_SCREENSHOT (default
// target/dashboard-e2e.png). The millgate under test must have the runnable `echo`
// (kind echo) and, from its config file: the webhook trigger `cfg-fail` whose runnable always
// fails with one attempt; the schedule `cfg-nightly` with at least one missed fire time; the
// schedule `cfg-tick` firing every second while its job runs for longer (so it skips); the
// poll `cfg-feed` whose first poll saves {"cursor": 1} and later ones keep the saved state.
// Exits 0 when every step passed, 1 with the failed step otherwise.

import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

const [adminArg, ingressArg, tokenArg] = process.argv.slice(2);
const ADMIN = (adminArg || process.env.MILLGATE_ADMIN_URL || '').replace(/\/+$/, '');
const INGRESS = (ingressArg || process.env.MILLGATE_INGRESS_URL || '').replace(/\/+$/, '');
const TOKEN = tokenArg || process.env.MILLGATE_ADMIN_TOKEN || '';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT || 'target/dashboard-e2e.png';
const TIMEOUT_MS = 15000;

if (!ADMIN || !INGRESS || !TOKEN) {
  console.error('usage: node e2e.mjs <admin-url> <ingress-url> <admin-token>\n'
    + '   (or MILLGATE_ADMIN_URL, MILLGATE_INGRESS_URL, MILLGATE_ADMIN_TOKEN)');
  process.exit(2);
}

const started = Date.now();
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${msg}`);

class StepFailure extends Error {}

/** Polls `probe` until it returns a truthy value; fails with `what` and the last value seen. */
async function until(what, probe, timeout = TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (err) {
      last = `error: ${err.message.split('\n')[0]}`;
    }
    if (Date.now() > deadline) {
      throw new StepFailure(`timed out after ${timeout} ms waiting for ${what} (last seen: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function check(condition, message) {
  if (!condition) throw new StepFailure(message);
}

/** Text of the element with this test id, or null when there is none. */
async function text(page, testid) {
  const loc = page.getByTestId(testid);
  if ((await loc.count()) === 0) return null;
  return (await loc.first().textContent()).trim();
}

async function textIs(page, testid, expected) {
  const t = await until(`[data-testid=${testid}] to read "${expected}"`, async () => {
    const t = await text(page, testid);
    return t === expected ? t : false;
  });
  return t;
}

async function visible(page, testid) {
  await page.getByTestId(testid).first().waitFor({ state: 'visible', timeout: TIMEOUT_MS })
    .catch((err) => { throw new StepFailure(`[data-testid=${testid}] not visible: ${err.message.split('\n')[0]}`); });
}

async function gone(page, testid) {
  await page.getByTestId(testid).first().waitFor({ state: 'detached', timeout: TIMEOUT_MS })
    .catch((err) => { throw new StepFailure(`[data-testid=${testid}] still there: ${err.message.split('\n')[0]}`); });
}

/** A plain HTTP POST to a webhook, as an outside caller would send it. */
async function fire(hook, body) {
  const resp = await fetch(`${INGRESS}/hooks/${hook}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const answer = await resp.text();
  let data = null;
  try {
    data = JSON.parse(answer);
  } catch {
    data = answer;
  }
  return { status: resp.status, data };
}

/** The admin API's answer, as the page gets it. */
async function apiGet(path) {
  const resp = await fetch(`${ADMIN}/${path}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  if (!resp.ok) throw new StepFailure(`GET ${path} answered ${resp.status}: ${await resp.text()}`);
  return resp.json();
}

async function addTrigger(page, snippet) {
  await page.getByTestId('add-trigger-text').fill(snippet);
  await page.getByTestId('add-trigger-submit').click();
}

let step = 'start';
const pageErrors = [];
const consoleLines = [];
let browser;
let page;
let failed = false;

try {
  step = 'launch chromium';
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60000,
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  let navigations = 0;
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations += 1; });
  log(`chromium ${browser.version()}; admin ${ADMIN}, ingress ${INGRESS}`);

  step = 'load the page';
  const resp = await page.goto(`${ADMIN}/`, { waitUntil: 'load' });
  check(resp && resp.status() === 200, `GET / answered ${resp && resp.status()}`);
  await visible(page, 'token-input');

  step = 'a wrong token is refused';
  await page.getByTestId('token-input').fill(`${TOKEN}-wrong`);
  await page.getByTestId('token-submit').click();
  await until('the token error to mention 401', async () => (await text(page, 'token-error'))?.includes('401'));

  step = 'enter the token';
  await page.getByTestId('token-input').fill(TOKEN);
  await page.getByTestId('token-submit').click();
  await visible(page, 'triggers-table');
  await visible(page, 'trigger-row-cfg-fail');
  check(await page.getByTestId('btn-delete-cfg-fail').isDisabled(), 'a config.toml trigger can be deleted from the page');
  await until('the live event stream to connect', async () =>
    (await page.getByTestId('live-status').getAttribute('data-live')) === 'on');
  log('logged in; trigger list shown; event stream connected');

  step = 'schedules and polls: next and last fire, counters';
  await visible(page, 'timed-card');
  for (const name of ['cfg-nightly', 'cfg-tick', 'cfg-feed']) await visible(page, `timed-row-${name}`);
  check((await page.getByTestId('timed-row-cfg-fail').count()) === 0, 'a webhook is listed with the schedules');
  // The page shows what the API says (fire times as RFC 3339 in data-at, local time as text).
  await until('cfg-nightly\'s next and last fire as the API has them', async () => {
    const s = (await apiGet('api/triggers/cfg-nightly')).source_status;
    const next = await page.getByTestId('timed-next-cfg-nightly').getAttribute('data-at');
    const last = await page.getByTestId('timed-last-cfg-nightly').getAttribute('data-at');
    return s.next_fires.length > 0 && next === s.next_fires[0] && last === s.last_fire && s.last_fire;
  });
  const nightly = (await apiGet('api/triggers/cfg-nightly')).source_status;
  check(nightly.missed >= 1, `cfg-nightly missed nothing: ${JSON.stringify(nightly)}`);
  await textIs(page, 'timed-missed-cfg-nightly', String(nightly.missed));
  check((await text(page, 'timed-next-cfg-nightly')) !== '—', 'no next fire time shown');
  await until('cfg-tick\'s skipped fire times to be counted', async () =>
    Number(await text(page, 'timed-skipped-cfg-tick')) >= 2);
  await until('cfg-feed\'s polls to be counted', async () =>
    Number(await text(page, 'timed-polls-cfg-feed')) >= 1 && Number(await text(page, 'timed-skipped_polls-cfg-feed')) >= 1);
  log(`cfg-nightly: next ${nightly.next_fires[0]}, last ${nightly.last_fire}, missed ${nightly.missed}; cfg-tick skips; cfg-feed polls`);

  step = 'a poll\'s saved state, edited';
  await textIs(page, 'timed-state-cfg-feed', '{"cursor":1}');
  await page.getByTestId('btn-edit-state-cfg-feed').click();
  await visible(page, 'state-editor');
  await textIs(page, 'state-editor-name', 'cfg-feed');
  check(JSON.parse(await page.getByTestId('state-text').inputValue()).cursor === 1, 'the editor does not hold the saved state');
  await page.getByTestId('state-text').fill('{"cursor": 2000');
  await page.getByTestId('state-save').click();
  await until('the editor to refuse what is not JSON', async () => (await text(page, 'state-error'))?.includes('not JSON'));
  check((await apiGet('api/triggers/cfg-feed/state')).state.cursor === 1, 'bad JSON was sent');
  await page.getByTestId('state-text').fill('{"cursor": 2000}');
  await page.getByTestId('state-save').click();
  await visible(page, 'state-ok');
  check(!(await page.getByTestId('state-error').isVisible()), 'the previous error is still shown');
  await textIs(page, 'timed-state-cfg-feed', '{"cursor":2000}');
  const polled = (await apiGet('api/triggers/cfg-feed')).source_status.polls;
  await until('a later poll', async () => (await apiGet('api/triggers/cfg-feed')).source_status.polls > polled);
  const saved = (await apiGet('api/triggers/cfg-feed/state')).state;
  check(saved && saved.cursor === 2000, `the saved state is ${JSON.stringify(saved)}, not the edit`);
  await page.getByTestId('state-cancel').click();
  check(!(await page.getByTestId('state-editor').isVisible()), 'the editor did not close');
  log('cfg-feed\'s state edited to {"cursor": 2000} and kept by the next polls');

  step = 'add a webhook trigger (TOML)';
  await addTrigger(page, [
    '# a webhook added from the dashboard',
    'name = "dash-hook"',
    'kind = "webhook"',
    'runnable = "echo"',
    'mode = "async"',
  ].join('\n'));
  await visible(page, 'trigger-row-dash-hook');
  await textIs(page, 'trigger-state-dash-hook', 'running');
  check(!(await page.getByTestId('add-trigger-error').isVisible()),
    `unexpected error: ${await text(page, 'add-trigger-error')}`);
  check((await page.getByTestId('trigger-row-dash-hook').textContent()).includes('async'), 'mode async not shown');
  log('dash-hook added and running');

  step = 'fire the webhook; the job shows up live';
  await page.evaluate(() => { window.__e2eNoReload = true; });
  const navigationsBefore = navigations;
  const fired = await fire('dash-hook', { hello: 'dashboard' });
  check(fired.status === 202, `POST /hooks/dash-hook answered ${fired.status} ${JSON.stringify(fired.data)}`);
  const jobId = fired.data.job_id;
  check(typeof jobId === 'string' && jobId, `no job_id in ${JSON.stringify(fired.data)}`);
  await visible(page, `job-row-${jobId}`);
  await textIs(page, `job-status-${jobId}`, 'succeeded');
  check(await page.evaluate(() => window.__e2eNoReload === true) && navigations === navigationsBefore,
    'the page was reloaded');
  log(`job ${jobId} appeared and succeeded without a reload`);

  step = 'job detail';
  await page.getByTestId(`job-open-${jobId}`).click();
  await textIs(page, 'job-detail-id', jobId);
  await textIs(page, 'job-detail-status', 'succeeded');
  check((await text(page, 'job-detail-args'))?.includes('dashboard'), 'args do not show the posted body');
  check((await text(page, 'job-detail-result'))?.includes('dashboard'), 'result does not show the echoed args');
  const steps = await page.getByTestId('job-detail-timeline').locator('li').allTextContents();
  check(steps.some((s) => s.includes('queued')) && steps.some((s) => s.includes('succeeded')),
    `timeline lacks queued/succeeded: ${JSON.stringify(steps)}`);

  step = 'disable the trigger';
  await page.getByTestId('btn-disable-dash-hook').click();
  await textIs(page, 'trigger-state-dash-hook', 'disabled');
  await until('the enable button to be offered once disabled',
    async () => page.getByTestId('btn-enable-dash-hook').isEnabled());
  const refused = await fire('dash-hook', { hello: 'again' });
  check(refused.status === 503, `a disabled webhook answered ${refused.status}, not 503`);
  log('dash-hook disabled (webhook answers 503)');

  step = 'an invalid trigger shows its error inline';
  await addTrigger(page, 'name = "bad-hook"\nkind = "webhook"\nrunnable = "nope"\n');
  await until('the inline error to name the unknown runnable', async () => {
    const t = await text(page, 'add-trigger-error');
    return t && t.includes('runnable') && t.includes('nope') && t;
  });
  check((await page.getByTestId('trigger-row-bad-hook').count()) === 0, 'the invalid trigger was listed');
  log(`inline error: ${await text(page, 'add-trigger-error')}`);

  step = 'add a trigger as JSON; a taken name is a conflict';
  await addTrigger(page, '{"name": "dash-json", "kind": "webhook", "runnable": "echo", "mode": "sync"}');
  await visible(page, 'trigger-row-dash-json');
  check(!(await page.getByTestId('add-trigger-error').isVisible()), 'the previous error is still shown');
  check((await page.getByTestId('trigger-row-dash-json').textContent()).includes('sync'), 'mode sync not shown');
  await addTrigger(page, '{"name": "dash-json", "kind": "webhook", "runnable": "echo"}');
  await until('a 409 error for the taken name', async () => (await text(page, 'add-trigger-error'))?.includes('409'));

  step = 'delete a trigger';
  page.once('dialog', (d) => d.accept());
  await page.getByTestId('btn-delete-dash-json').click();
  await gone(page, 'trigger-row-dash-json');

  step = 'a dead letter shows up live and is replayed';
  const failing = await fire('cfg-fail', { doomed: true });
  check(failing.status === 202, `POST /hooks/cfg-fail answered ${failing.status} ${JSON.stringify(failing.data)}`);
  const deadId = failing.data.job_id;
  await visible(page, `dead-letter-row-${deadId}`);
  await textIs(page, `job-status-${deadId}`, 'dead_lettered');
  await until('the errors column of cfg-fail to count it', async () => Number(await text(page, 'trigger-errors-cfg-fail')) >= 1);
  await page.getByTestId(`btn-replay-${deadId}`).click();
  await gone(page, `dead-letter-row-${deadId}`);
  const replayId = await until('the detail panel to show the replay', async () => {
    const id = await text(page, 'job-detail-id');
    return id && id !== deadId && id !== jobId && id;
  });
  await visible(page, `job-row-${replayId}`);
  // The replay runs the same failing runnable: it becomes a dead letter of its own.
  await visible(page, `dead-letter-row-${replayId}`);
  log(`dead letter ${deadId} replayed as ${replayId}`);

  step = 'suspend: jobs are parked; resume: they run';
  await page.getByTestId('btn-enable-dash-hook').click();
  await textIs(page, 'trigger-state-dash-hook', 'running');
  await page.getByTestId('btn-suspend-dash-hook').click();
  await textIs(page, 'trigger-state-dash-hook', 'suspended');
  const parked = await fire('dash-hook', { hello: 'later' });
  check(parked.status === 202, `a suspended webhook answered ${parked.status} ${JSON.stringify(parked.data)}`);
  await textIs(page, `job-status-${parked.data.job_id}`, 'parked');
  await until('the trigger to show 1 parked job', async () => (await text(page, 'trigger-parked-dash-hook')) === '1 parked');
  await page.getByTestId('btn-resume-dash-hook').click();
  await textIs(page, 'trigger-state-dash-hook', 'running');
  await textIs(page, `job-status-${parked.data.job_id}`, 'succeeded');
  log('suspended: the job was parked; resumed: it ran');

  step = 'final view';
  await page.getByTestId(`job-open-${jobId}`).click();
  await textIs(page, 'job-detail-id', jobId);
  check(pageErrors.length === 0, `uncaught errors in the page:\n  ${pageErrors.join('\n  ')}`);
  log('all steps passed');
} catch (err) {
  failed = true;
  console.error(`\nFAILED at step "${step}": ${err instanceof StepFailure ? err.message : err.stack || err}`);
  if (pageErrors.length) console.error(`uncaught errors in the page:\n  ${pageErrors.join('\n  ')}`);
  if (consoleLines.length) console.error(`browser console:\n  ${consoleLines.slice(-30).join('\n  ')}`);
  if (page) {
    for (const id of ['global-error', 'token-error', 'add-trigger-error', 'trigger-action-error', 'state-error', 'live-status']) {
      const t = await text(page, id).catch(() => null);
      if (t) console.error(`  [${id}] ${t}`);
    }
  }
} finally {
  if (page) {
    try {
      mkdirSync(dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      log(`screenshot: ${SCREENSHOT}`);
    } catch (err) {
      console.error(`could not take the screenshot: ${err.message}`);
    }
  }
  if (browser) await browser.close().catch(() => {});
}
process.exit(failed ? 1 : 0);
