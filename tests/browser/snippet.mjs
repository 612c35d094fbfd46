// Case e: a README snippet run in a page of the gateway's origin, as a
// user would paste it. Input: {url, snippet, timeout_ms}: opens `url` (a
// page of the origin), runs `snippet` (an async script body that appends
// to document.body) and prints {"result": {text, problems}} with the
// body's text after it.
import { args, run, say } from './lib.mjs';

const config = args();

await run(config.timeout_ms, async (browser) => {
  const page = await browser.newPage();
  const problems = [];
  // A failed load shows as a console error without its URL: answers are
  // checked instead (the browser's own favicon request is no problem).
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(m.text());
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) problems.push(`${r.status()} ${r.url()}`);
  });
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.goto(config.url);
  await page.evaluate(() => { document.body.textContent = ''; });
  await page.evaluate(`(async () => {\n${config.snippet}\n})()`);
  say({ result: { text: await page.evaluate(() => document.body.textContent), problems } });
});
