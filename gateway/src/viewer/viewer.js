'use strict';
// The gateway's live viewer. It reads this page's own URL as Server-Sent
// Events and shows each event as a row. It reads the stream with fetch()
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
  const $ = (id) => document.getElementById(id);
  const rows = $('rows');
  const pauseButton = $('pause');

  let lastId = '';
  let retry = 3000;
  let paused = false;
  let held = [];
  let droppedWhilePaused = 0;
  let count = 0;
  let reconnects = 0;
  let opened = false;
  const buckets = new Array(60).fill(0);
  let second = Math.floor(Date.now() / 1000);

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
  function drawRate() {
    roll();
    const last5 = buckets.slice(-6, -1).reduce((a, b) => a + b, 0) / 5;
    $('rate').textContent = last5 >= 10 ? Math.round(last5) : last5.toFixed(1);
    const max = Math.max(1, ...buckets);
    const points = buckets.map((n, i) => i + ',' + (19 - (n / max) * 18).toFixed(1));
    $('line').setAttribute('points', points.join(' '));
  }
  function counters() {
    $('count').textContent = count;
    $('reconnects').textContent = reconnects;
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

  function addRow(row) {
    const tr = document.createElement('tr');
    if (row.name.startsWith('gateway.')) tr.className = 'gateway';
    cell(tr, time(row.time), 'time');
    cell(tr, row.source, 'source');
    cell(tr, row.name, 'name');
    cell(tr, row.id, 'id').title = row.id;
    const long = row.data.length > SHORT;
    const td = cell(tr, long ? row.data.slice(0, SHORT) + '…' : row.data, long ? 'data long' : 'data');
    if (long) {
      td.title = row.data.length > 4000 ? row.data.slice(0, 4000) + '…' : row.data;
      td.addEventListener('click', () => {
        const open = td.classList.toggle('open');
        td.textContent = open ? row.pretty : row.data.slice(0, SHORT) + '…';
      });
    }
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
    counters();
  }

  // The SSE parser (the HTML standard's rules): lines end at CRLF, LF or
  // CR; an empty line dispatches; `:` starts a comment.
  let event = { data: [], size: 0, name: '', id: null };
  function field(line) {
    if (line === '') {
      if (event.id !== null) lastId = event.id;
      if (event.data.length) {
        show({ name: event.name || 'message', id: lastId, data: event.data.join('\n') });
      }
      event = { data: [], size: 0, name: '', id: null };
      return;
    }
    if (line[0] === ':') return;
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

  async function connect() {
    setState(opened || reconnects ? 'reconnecting' : 'connecting');
    const headers = { Accept: 'text/event-stream' };
    if (lastId) headers['Last-Event-ID'] = lastId;
    try {
      const response = await fetch(url, { headers, cache: 'no-store' });
      const type = response.headers.get('content-type') || '';
      if (response.status === 200 && type.startsWith('text/event-stream')) {
        opened = true;
        setState('open');
        note('');
        await read(response.body);
        note('the stream ended; reconnecting in ' + retry + ' ms');
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
          note(message + ' (not reconnecting; reload to retry)', true);
          return;
        }
        note(message + '; reconnecting in ' + retry + ' ms', true);
      }
    } catch (error) {
      note(String(error && error.message ? error.message : error) + '; reconnecting in ' + retry + ' ms', true);
    }
    reconnects += 1;
    counters();
    setState('reconnecting');
    setTimeout(connect, retry);
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

  setInterval(drawRate, 1000);
  drawRate();
  connect();
})();
