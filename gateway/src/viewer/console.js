'use strict';
// The console's index page: Open builds a stream route's URL from its path
// and the parameters typed beside it (each percent-encoded) and goes to
// its live viewer; Publish posts an event to a publish path with a bearer
// token and shows the answer.
(() => {
  // `/rooms/{room}` with the row's inputs, or why it cannot be made.
  function fill(container) {
    let path = container.dataset.path;
    for (const input of container.querySelectorAll('input.param')) {
      const value = input.value.trim();
      if (!value) return { missing: input.dataset.param };
      path = path.split('{' + input.dataset.param + '}').join(encodeURIComponent(value));
    }
    return { path };
  }

  for (const row of document.querySelectorAll('#routes tr[data-path]')) {
    row.querySelector('button.open').addEventListener('click', () => {
      const { path, missing } = fill(row);
      if (missing) {
        row.querySelector(`input[data-param="${missing}"]`).focus();
        return;
      }
      location.href = path;
    });
  }

  for (const form of document.querySelectorAll('section.publish')) {
    const answer = form.querySelector('output.answer');
    form.querySelector('button.send').addEventListener('click', async () => {
      const { path, missing } = fill(form);
      if (missing) {
        answer.textContent = 'fill in ' + missing;
        return;
      }
      let data;
      try {
        data = JSON.parse(form.querySelector('textarea.data').value);
      } catch (error) {
        answer.textContent = 'data is not JSON: ' + error.message;
        return;
      }
      const event = { data };
      const name = form.querySelector('input.event').value.trim();
      if (name) event.event = name;
      const headers = { 'Content-Type': 'application/json' };
      const token = form.querySelector('input.token').value.trim();
      if (token) headers.Authorization = 'Bearer ' + token;
      try {
        const response = await fetch(path, { method: 'POST', headers, body: JSON.stringify(event) });
        const text = await response.text();
        answer.textContent = response.status + ' ' + text;
        answer.className = response.ok ? 'answer ok' : 'answer bad';
      } catch (error) {
        answer.textContent = String(error && error.message ? error.message : error);
        answer.className = 'answer bad';
      }
    });
  }
})();
