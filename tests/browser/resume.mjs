// Case a: one EventSource on a resumable route, left to reconnect by itself
// while the Rust test publishes, ends streams and restarts the gateway.
// Input: {page, stream, names, expect, timeout_ms}. Prints {"ready": true}
// once the stream is open, then {"result": {...}} once `expect` events
// arrived: the events, opens, errors, closes, and the Last-Event-ID of every
// request the browser made for the stream.
import { args, fail, openEventSources, recorded, run, say } from './lib.mjs';

const config = args();
await run(config.timeout_ms, async (browser) => {
  const page = await browser.newPage();
  const requests = [];
  page.on('request', (request) => {
    if (request.url() === config.stream) {
      requests.push(request.allHeaders().then((h) => h['last-event-id'] ?? null));
    }
  });
  await page.goto(config.page);
  await openEventSources(page, [{ url: config.stream, names: config.names }]);
  await page.waitForFunction(() => window.recorded[0].opens >= 1, null, { timeout: 10000 });
  say({ ready: true });
  try {
    await page.waitForFunction((n) => window.recorded[0].events.length >= n, config.expect, {
      timeout: config.timeout_ms - 5000,
    });
  } catch (error) {
    const [log] = await recorded(page);
    fail(`${log.events.length} of ${config.expect} events arrived (${log.opens} opens, ${log.errors} errors)`);
  }
  const [log] = await recorded(page);
  await page.evaluate(() => window.recorded[0].source.close());
  say({ result: { ...log, last_event_ids: await Promise.all(requests) } });
});
