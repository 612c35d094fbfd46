// Case f: the console. Input: {console, token, room, artifacts, timeout_ms}.
// On the index page (desktop, then 390 px): publishes an event to a room
// through the publish form, opens the room's viewer from the index (its
// parameter typed in), filters, copies an event's data; opens the protected
// route (a token, then Connect) and reads its details (request id,
// heartbeats); opens the POST route (a JSON body, then Connect) until it is
// complete; starts the room from a chosen id. Screenshots at both widths.
// Prints {"result": {...}}; every wait is bounded.
import { args, run, say } from './lib.mjs';

const config = args();
const WAIT = { timeout: 10000 };

await run(config.timeout_ms, async (browser) => {
  const problems = [];
  const watch = (page) => {
    page.on('console', (m) => {
      if ((m.type() === 'error' || m.type() === 'warning') && !m.text().startsWith('Failed to load resource')) {
        problems.push(m.text());
      }
    });
    page.on('pageerror', (e) => problems.push(String(e)));
    page.on('response', (r) => {
      if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) problems.push(`${r.status()} ${r.url()}`);
    });
  };
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write']);
  const page = await context.newPage();
  watch(page);
  const result = {};
  const index = await page.goto(config.console);
  result.index = {
    status: index.status(),
    csp: index.headers()['content-security-policy'] ?? null,
    routes: await page.locator('#routes tbody tr td.name').allTextContents(),
    publish: await page.locator('section.publish h3').allTextContents(),
    text: await page.textContent('body'),
  };
  await page.screenshot({ path: config.artifacts + '/console.png', fullPage: true });

  // Publish to the room through the form.
  const form = page.locator('section.publish').first();
  await form.locator('input.param').fill(config.room);
  await form.locator('input.event').fill('message');
  await form.locator('input.token').fill(config.token);
  await form.locator('textarea.data').fill('{"text": "from the console"}');
  await form.locator('button.send').click();
  await page.waitForFunction(() => document.querySelector('output.answer').textContent !== '', null, WAIT);
  result.published = await form.locator('output.answer').textContent();

  // Open the room's viewer from the index: its event is there (history).
  const rooms = page.locator('#routes tr', { hasText: 'rooms' }).first();
  await rooms.locator('input.param').fill(config.room);
  await rooms.locator('button.open').click();
  await page.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 1, null, WAIT);
  result.room = {
    url: page.url(),
    first: await page.locator('#rows tr').first().locator('td').allTextContents(),
  };
  // Filter: a word in no row hides them all; `name:message` shows it.
  await page.fill('#filter', 'nothing-like-this');
  result.filtered_out = await page.locator('#rows tr:not([hidden])').count();
  await page.fill('#filter', 'name:message console');
  result.filtered_in = await page.locator('#rows tr:not([hidden])').count();
  await page.fill('#filter', '');
  // Pretty data and Copy.
  await page.locator('#rows tr').first().locator('td.data').click();
  result.pretty = await page.locator('#rows tr').first().locator('td.data').textContent();
  await page.locator('#rows tr').first().locator('button.copy').click();
  await page.waitForFunction(() => document.getElementById('note').textContent.startsWith('copied'), null, WAIT);
  result.clipboard = await page.evaluate(() => navigator.clipboard.readText());
  // Start from a chosen id: the event's own id reads what comes after it.
  const id = await page.locator('#rows tr').first().locator('td.id').textContent();
  await page.fill('#from', id);
  await page.click('#connect');
  await page.waitForFunction(() => document.getElementById('state').textContent === 'open', null, WAIT);
  await page.waitForTimeout(300);
  result.from_id = { id, rows_after: await page.locator('#rows tr').count() };

  // The protected route: idle until a token is given.
  await page.goto(config.secret);
  result.secret_before = {
    state: await page.textContent('#state'),
    token_shown: await page.isVisible('#token'),
  };
  await page.fill('#token', config.secret_token);
  await page.click('#connect');
  await page.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 1, null, WAIT);
  await page.waitForFunction(() => Number(document.getElementById('beats').textContent) >= 1, null, WAIT);
  await page.click('#details summary');
  result.secret_after = {
    state: await page.textContent('#state'),
    request_id: await page.textContent('#rid'),
    format: await page.textContent('#format'),
    beats: Number(await page.textContent('#beats')),
  };
  await page.screenshot({ path: config.artifacts + '/viewer-controls.png' });

  // The POST route: a body, Connect, the stream, then complete.
  await page.goto(config.echo);
  result.echo_before = { state: await page.textContent('#state'), body_shown: await page.isVisible('#body') };
  await page.fill('#body', '{"text": "Hi there"}');
  await page.click('#connect');
  await page.waitForFunction(() => document.getElementById('state').textContent === 'completed', null, WAIT);
  result.echo = {
    tokens: await page.locator('#rows tr td.data').allTextContents(),
    note: await page.textContent('#note'),
  };

  // Phone width: the index and a viewer with its controls.
  const phone = await browser.newPage({ viewport: { width: 390, height: 800 } });
  watch(phone);
  await phone.goto(config.console);
  result.phone = { index_width: await phone.evaluate(() => document.documentElement.scrollWidth) };
  await phone.screenshot({ path: config.artifacts + '/console-390px.png', fullPage: true });
  await phone.goto(config.secret);
  result.phone.viewer_width = await phone.evaluate(() => document.documentElement.scrollWidth);
  // Dark mode: the pages follow the system's scheme.
  const dark = await browser.newPage({ colorScheme: 'dark', viewport: { width: 390, height: 800 } });
  watch(dark);
  await dark.goto(config.secret);
  result.dark = await dark.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await dark.screenshot({ path: config.artifacts + '/viewer-dark-390px.png' });
  result.problems = problems;
  say({ result });
});
