// Case c: the gateway's own viewer page, as a browser navigating to a
// route URL gets it. Input: {url, fan_in, fast, max_rows, artifact, timeout_ms}. Waits for
// rows, pauses, clears, resumes, waits for a reconnect after the stream's
// lifetime, keeps a screenshot at `artifact`, then opens `fan_in` (a route
// with two backends) and reads the sources of its rows. Prints
// {"result": {...}} with what it saw; every wait is bounded.
import { args, run, say } from './lib.mjs';

const config = args();
const WAIT = { timeout: 10000 };

await run(config.timeout_ms, async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  const response = await page.goto(config.url);
  const result = {
    status: response.status(),
    content_type: response.headers()['content-type'],
    csp: response.headers()['content-security-policy'] ?? null,
  };
  const rows = () => page.locator('#rows tr').count();
  const number = async (id) => Number(await page.textContent(id));

  await page.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 3, null, WAIT);
  // The rate shows while the first events arrive (it read 0.0/s).
  result.first_rate = await page.textContent('#rate');
  await page.waitForFunction(() => document.getElementById('state').textContent === 'open', null, WAIT);
  result.state = await page.textContent('#state');
  result.columns = await page.locator('thead th').allTextContents();
  result.first_row = await page.locator('#rows tr').first().locator('td').allTextContents();

  // Paused: events are counted, no row is added.
  await page.click('#pause');
  const pausedRows = await rows();
  const pausedCount = await number('#count');
  await page.waitForFunction((c) => Number(document.getElementById('count').textContent) >= c + 3,
    pausedCount, WAIT);
  result.pause = {
    rows_before: pausedRows,
    rows_after: await rows(),
    count_before: pausedCount,
    count_after: await number('#count'),
    held: await page.textContent('#held'),
    button: await page.textContent('#pause'),
  };
  // Cleared (while paused, so no row can come in between).
  await page.click('#clear');
  result.rows_after_clear = await rows();
  // Resumed: rows come again.
  await page.click('#pause');
  await page.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 1, null, WAIT);
  result.rows_after_resume = await rows();

  // The stream ends at its lifetime; the page reconnects and goes on.
  await page.waitForFunction(() => Number(document.getElementById('reconnects').textContent) >= 1,
    null, WAIT);
  await page.waitForFunction(() => document.getElementById('state').textContent === 'open', null, WAIT);
  const countAtReconnect = await number('#count');
  await page.waitForFunction((c) => Number(document.getElementById('count').textContent) > c,
    countAtReconnect, WAIT);
  result.reconnects = await number('#reconnects');
  result.state_after_reconnect = await page.textContent('#state');
  result.rows_bounded = await rows();
  result.rate = await page.textContent('#rate');
  result.sparkline = await page.getAttribute('#line', 'points');
  await page.screenshot({ path: config.artifact });

  // A route with two backends: each row names its event's source.
  await page.goto(config.fan_in);
  await page.waitForFunction(() => {
    const sources = [...document.querySelectorAll('#rows td.source')].map((td) => td.textContent);
    return new Set(sources).size >= 2;
  }, null, WAIT);
  result.fan_in_sources = [...new Set(await page.locator('#rows td.source').allTextContents())].sort();

  // A fast route: the table keeps the newest rows only.
  await page.goto(config.fast);
  await page.waitForFunction((n) => Number(document.getElementById('count').textContent) > n,
    config.max_rows + 200, WAIT);
  result.fast = { count: await number('#count'), rows: await rows() };

  // A stream that ends: its resume is answered 204, and the page says the
  // stream is complete (not an error, no reconnect counted).
  await page.goto(config.done);
  await page.waitForFunction(() => document.getElementById('state').textContent === 'completed',
    null, WAIT);
  result.done = {
    state: await page.textContent('#state'),
    note: await page.textContent('#note'),
    note_class: await page.getAttribute('#note', 'class'),
    reconnects: await number('#reconnects'),
    rows: await rows(),
  };

  // At phone width (390 px) every row still shows its data.
  const phone = await browser.newPage({ viewport: { width: 390, height: 800 } });
  phone.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(m.text()); });
  phone.on('pageerror', (e) => problems.push(String(e)));
  await phone.goto(config.url);
  await phone.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 3, null, WAIT);
  const cellBox = await phone.locator('#rows tr').first().locator('td.data').boundingBox();
  result.phone = {
    data_width: cellBox ? cellBox.width : 0,
    data_text: await phone.locator('#rows tr').first().locator('td.data').textContent(),
    page_width: await phone.evaluate(() => document.documentElement.scrollWidth),
  };
  await phone.screenshot({ path: config.phone_artifact });
  result.problems = problems;
  say({ result });
});
