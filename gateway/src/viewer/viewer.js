'use strict';
// The gateway's live viewer. It reads this page's own URL as Server-Sent
// Events and shows each event as a row: filtered, pretty-printed and copied
// on demand, started from a chosen Last-Event-ID, with a bearer token for
// protected routes and a JSON body for POST routes. It reads the stream with fetch()
// rather than EventSource: EventSource only hands a page the events whose
// names it listened for in advance, and a viewer must show every event
// whatever its name. It reconnects as EventSource does: after the stream's
// `retry:` delay, sending the last id it saw as Last-Event-ID.
(() => {
  const conf = document.body.dataset;
  const MAX_ROWS = Number(conf.maxRows) || 500;
  const SHORT = 200; // characters of data shown before the cell is expanded
  const MAX_DATA = 100000; // characters of data kept per event
  const MAX_LINE = 1 << 24; // characters buffered before a line ends
  const envelope = conf.envelope === 'true';
  const url = location.pathname + location.search;
  const methods = (conf.methods || 'GET').split(',').map((m) => m.trim());
  const canGet = methods.includes('GET');
  const canPost = methods.includes('POST');
  const $ = (id) => document.getElementById(id);
  const rows = $('rows');
  const pauseButton = $('pause');
  $('token-field').hidden = !conf.auth || conf.auth === 'none';
  $('body-field').hidden = !canPost;

  let lastId = '';
  let retry = 3000;
  let paused = false;
  let held = [];
  let droppedWhilePaused = 0;
  let count = 0;
  let reconnects = 0;
  let opened = false;
  let beats = 0;
  let filter = [];
  // The connection in progress, aborted by Connect.
  let current = null;
  let timer = null;
  const buckets = new Array(60).fill(0);
  const started = Date.now();
  let second = Math.floor(started / 1000);
  let drawn = 0;
  // Why the page reconnected, newest last (shown on the counter).
  const reasons = [];
  let ending = '';

  function setState(state) {
    const el = $('state');
    el.textContent = state;
    el.className = 'state ' + state;
  }
  function note(text, error) {
    $('note').textContent = text;
    $('note').className = error ? 'error' : '';
  }

  function roll() {
    const now = Math.floor(Date.now() / 1000);
    for (let s = second; s < now && s < second + 60; s++) {
      buckets.shift();
      buckets.push(0);
    }
    second = now;
  }
  // Events per second over the last 5 s, the second under way included
  // (a stream's first events show a rate at once), over no more time than
  // the page has been counting.
  function drawRate() {
    roll();
    const now = Date.now();
    const span = Math.min(4 + (now % 1000) / 1000, (now - started) / 1000);
    const recent = buckets.slice(-5).reduce((a, b) => a + b, 0);
    const perSecond = recent / Math.max(span, 0.25);
    $('rate').textContent = perSecond >= 10 ? Math.round(perSecond) : perSecond.toFixed(1);
    const max = Math.max(1, ...buckets);
    const points = buckets.map((n, i) => i + ',' + (19 - (n / max) * 18).toFixed(1));
    $('line').setAttribute('points', points.join(' '));
    drawn = now;
  }
  function counters() {
    $('count').textContent = count;
    $('reconnects').textContent = reconnects;
    $('reconnects').parentElement.title = reasons.length
      ? 'reconnected after: ' + reasons.slice(-5).join('; ')
      : 'times the page reconnected';
    $('held').textContent = paused
      ? 'paused, ' + held.length + ' held' + (droppedWhilePaused ? ', ' + droppedWhilePaused + ' dropped' : '')
      : '';
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function time(date) {
    const pad = (n, w) => String(n).padStart(w, '0');
    return pad(date.getHours(), 2) + ':' + pad(date.getMinutes(), 2) + ':' +
      pad(date.getSeconds(), 2) + '.' + pad(date.getMilliseconds(), 3);
  }

  // An event as a row's values: an envelope names its source and wraps the
  // data; the gateway's own events name themselves.
  function describe(event) {
    let source = conf.source || '';
    let data = event.data;
    let pretty = data;
    let value;
    let json = false;
    try {
      value = JSON.parse(data);
      json = true;
    } catch (_) { /* text */ }
    if (json) {
      const object = value !== null && typeof value === 'object' && !Array.isArray(value);
      if (event.name.startsWith('gateway.')) {
        source = object && typeof value.source === 'string' ? value.source : 'gateway';
      } else if (envelope && object && 'source' in value && 'data' in value) {
        source = String(value.source);
        value = value.data;
      }
      data = JSON.stringify(value);
      pretty = JSON.stringify(value, null, 2);
    }
    return { time: new Date(), source, name: event.name, id: event.id, data, pretty };
  }

  // Filter terms: `source:x` and `name:x` match those columns, any other
  // word the row's text; every term must match (case does not matter).
  function parseFilter(text) {
    return text.toLowerCase().split(/\s+/).filter(Boolean).map((term) => {
      const at = term.indexOf(':');
      const field = at > 0 ? term.slice(0, at) : '';
      return ['source', 'name', 'id'].includes(field)
        ? { field, value: term.slice(at + 1) }
        : { field: 'text', value: term };
    });
  }
  function matches(tr) {
    return filter.every(({ field, value }) => (tr.dataset[field] || '').includes(value));
  }
  function applyFilter() {
    filter = parseFilter($('filter').value);
    for (const tr of rows.rows) tr.hidden = !matches(tr);
  }

  function addRow(row) {
    const tr = document.createElement('tr');
    if (row.name.startsWith('gateway.')) tr.className = 'gateway';
    tr.dataset.source = row.source.toLowerCase();
    tr.dataset.name = row.name.toLowerCase();
    tr.dataset.id = (row.id || '').toLowerCase();
    tr.dataset.text = (row.source + ' ' + row.name + ' ' + row.data).toLowerCase();
    tr.hidden = !matches(tr);
    cell(tr, time(row.time), 'time');
    cell(tr, row.source, 'source');
    cell(tr, row.name, 'name');
    cell(tr, row.id, 'id').title = row.id;
    const long = row.data.length > SHORT;
    const short = long ? row.data.slice(0, SHORT) + '…' : row.data;
    const td = cell(tr, short, 'data');
    if (long) td.title = row.data.length > 4000 ? row.data.slice(0, 4000) + '…' : row.data;
    // A click shows the data pretty-printed, with a button that copies it.
    td.addEventListener('click', (e) => {
      if (e.target.tagName === 'BUTTON') return;
      const open = td.classList.toggle('open');
      td.textContent = open ? row.pretty : short;
      if (open) {
        const copy = document.createElement('button');
        copy.type = 'button';
        copy.className = 'copy';
        copy.textContent = 'Copy';
        copy.addEventListener('click', async () => {
          try {
            await navigator.clipboard.writeText(row.pretty);
            note('copied the data of event ' + (row.id || '(no id)'));
          } catch (error) {
            note('could not copy: ' + (error && error.message ? error.message : error), true);
          }
        });
        td.prepend(copy);
      }
    });
    rows.insertBefore(tr, rows.firstChild);
    while (rows.rows.length > MAX_ROWS) rows.deleteRow(-1);
  }

  function show(event) {
    count += 1;
    roll();
    buckets[buckets.length - 1] += 1;
    const row = describe(event);
    if (paused) {
      held.push(row);
      if (held.length > MAX_ROWS) {
        held.shift();
        droppedWhilePaused += 1;
      }
    } else {
      addRow(row);
    }
    if (event.name === 'gateway.close') {
      try { ending = 'the gateway ended the stream (' + JSON.parse(event.data).reason + ')'; } catch (_) { /* text */ }
    }
    // The first events show a rate at once; then at most 4 redraws a second.
    if (count <= 10 || Date.now() - drawn > 250) drawRate();
    counters();
  }

  // The SSE parser (the HTML standard's rules): lines end at CRLF, LF or
  // CR; an empty line dispatches; `:` starts a comment.
  let event = { data: [], size: 0, name: '', id: null };
  function field(line) {
    if (line === '') {
      if (event.id !== null) {
        lastId = event.id;
        $('last').textContent = lastId || '–';
      }
      if (event.data.length) {
        show({ name: event.name || 'message', id: lastId, data: event.data.join('\n') });
      }
      event = { data: [], size: 0, name: '', id: null };
      return;
    }
    if (line[0] === ':') {
      beats += 1;
      $('beats').textContent = beats;
      return;
    }
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (name === 'data') {
      if (event.size < MAX_DATA) event.data.push(value.slice(0, MAX_DATA - event.size));
      event.size += value.length + 1;
    } else if (name === 'event') {
      event.name = value;
    } else if (name === 'id') {
      if (!value.includes('\0')) event.id = value;
    } else if (name === 'retry') {
      if (/^[0-9]+$/.test(value)) retry = Number(value);
    }
  }
  async function read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let start = true;
    event = { data: [], size: 0, name: '', id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      if (start && buffer.length) {
        if (buffer.charCodeAt(0) === 0xfeff) buffer = buffer.slice(1);
        start = false;
      }
      let at;
      while ((at = buffer.search(/[\r\n]/)) >= 0) {
        // A CR at the end may be the first half of a CRLF.
        if (buffer[at] === '\r' && at === buffer.length - 1) break;
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + (buffer[at] === '\r' && buffer[at + 1] === '\n' ? 2 : 1));
        field(line);
      }
      if (buffer.length > MAX_LINE) throw new Error('a line longer than ' + MAX_LINE + ' characters');
    }
  }

  // One connection attempt, and the next after `retry` unless the answer
  // says there is nothing more to read.
  async function connect() {
    timer = null;
    setState(opened ? 'reconnecting' : 'connecting');
    const headers = { Accept: 'text/event-stream' };
    if (lastId) headers['Last-Event-ID'] = lastId;
    const token = $('token').value.trim();
    if (token) headers.Authorization = 'Bearer ' + token;
    const body = canPost ? $('body').value.trim() : '';
    const init = { headers, cache: 'no-store' };
    if (body || !canGet) {
      init.method = 'POST';
      headers['Content-Type'] = 'application/json';
      init.body = body || '{}';
    }
    const controller = new AbortController();
    current = controller;
    init.signal = controller.signal;
    let why;
    try {
      const response = await fetch(url, init);
      $('rid').textContent = response.headers.get('x-request-id') || '–';
      const type = response.headers.get('content-type') || '';
      if (response.status === 200 && type.startsWith('text/event-stream')) {
        if (opened) {
          reconnects += 1;
          counters();
        }
        opened = true;
        $('format').textContent = type;
        setState('open');
        note('');
        ending = '';
        await read(response.body);
        why = ending || 'the stream ended';
        note(why + '; reconnecting in ' + retry + ' ms');
      } else if (response.status === 204) {
        // Nothing after the last id: the stream is complete, as
        // EventSource takes a 204 to mean. Not an error.
        setState('completed');
        note(lastId ? 'complete: nothing comes after id ' + lastId : 'complete: the stream has no events');
        return;
      } else {
        let message = 'HTTP ' + response.status;
        try {
          const error = await response.json();
          if (error && error.message) message += ': ' + error.message;
        } catch (_) { /* not JSON */ }
        // As EventSource does, stop on an answer that is no stream, except
        // for the gateway being full or going away (retry on those).
        if (![429, 502, 503, 504].includes(response.status)) {
          setState('closed');
          const hint = response.status === 401 || response.status === 403
            ? ' (enter a token, then Connect)'
            : ' (change the settings and Connect, or reload)';
          note(message + hint, true);
          return;
        }
        why = message;
        note(message + '; reconnecting in ' + retry + ' ms', true);
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      why = String(error && error.message ? error.message : error);
      note(why + '; reconnecting in ' + retry + ' ms', true);
    }
    if (controller !== current) return;
    reasons.push(why);
    if (reasons.length > 20) reasons.shift();
    $('why').textContent = reasons.slice(-5).join('; ');
    counters();
    setState('reconnecting');
    timer = setTimeout(connect, retry);
  }

  // Connect: a new reading with the form's settings, from its id.
  function restart() {
    if (current) current.abort();
    if (timer) clearTimeout(timer);
    lastId = $('from').value.trim();
    opened = false;
    connect();
  }

  pauseButton.addEventListener('click', () => {
    paused = !paused;
    pauseButton.textContent = paused ? 'Resume' : 'Pause';
    pauseButton.setAttribute('aria-pressed', String(paused));
    if (!paused) {
      for (const row of held) addRow(row);
      held = [];
      droppedWhilePaused = 0;
    }
    counters();
  });
  $('clear').addEventListener('click', () => {
    rows.replaceChildren();
    held = [];
    droppedWhilePaused = 0;
    counters();
  });

  $('filter').addEventListener('input', applyFilter);
  $('connect').addEventListener('click', restart);

  setInterval(drawRate, 1000);
  drawRate();
  // A route anyone may GET is read at once; one that asks for a token or a
  // body waits for Connect.
  if (canGet && (!conf.auth || conf.auth === 'none')) {
    connect();
  } else {
    setState('idle');
    note(canGet ? 'enter a token, then Connect' : 'enter a JSON body, then Connect');
  }
})();
