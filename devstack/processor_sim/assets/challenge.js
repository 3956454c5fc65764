/* The 3-D Secure challenge page (the simulator's /3ds/challenge, in the look-alike's overlay).
 *
 * The parent (Stripe.js) hands it the intent's client secret by postMessage once it says it is
 * ready; a button then completes or fails the authentication (POST /3ds/authenticate, with the
 * publishable key and the client secret) and tells the parent it is done. Messages go only to the
 * parent at the origin named in the address, and are taken only from it.
 */
(function () {
  'use strict';
  var params = new URLSearchParams(location.search);
  var PARENT = params.get('origin');
  var KEY = params.get('key') || '';
  var INTENT = params.get('payment_intent') || '';
  if (!PARENT || window.parent === window) return;
  var buttons = {complete: document.getElementById('complete'), fail: document.getElementById('fail')};
  var statusLine = document.getElementById('status');
  var clientSecret = null;

  function tell(message) { window.parent.postMessage(message, PARENT); }

  function call(method, path, form) {
    var init = {method: method, headers: {Authorization: 'Bearer ' + KEY}, credentials: 'omit', cache: 'no-store'};
    if (form) {
      init.headers['Content-Type'] = 'application/x-www-form-urlencoded';
      init.body = new URLSearchParams(form).toString();
    }
    return fetch(path, init).then(function (resp) { return resp.json(); });
  }

  function showAmount() {
    call('GET', '/v1/payment_intents/' + encodeURIComponent(INTENT) + '?client_secret=' + encodeURIComponent(clientSecret))
      .then(function (pi) {
        if (!pi || pi.error || typeof pi.amount !== 'number') return;
        var money = new Intl.NumberFormat('en-US', {style: 'currency', currency: String(pi.currency || 'usd').toUpperCase()});
        document.getElementById('amount').textContent = ' of ' + money.format(pi.amount / 100);
      })
      .catch(function () { /* the amount is a courtesy; the buttons work without it */ });
  }

  function decide(result) {
    buttons.complete.disabled = true;
    buttons.fail.disabled = true;
    statusLine.textContent = 'Authenticating…';
    call('POST', '/3ds/authenticate', {payment_intent: INTENT, client_secret: clientSecret, result: result})
      .then(function (answer) { return answer && answer.error ? {error: answer.error} : {status: answer.status}; })
      .catch(function () { return {error: {type: 'api_connection_error', message: 'Could not reach the processor.'}}; })
      .then(function (outcome) {
        statusLine.textContent = outcome.error ? 'Authentication could not be recorded.' : 'Done.';
        tell({type: 'done', result: result, outcome: outcome});
      });
  }

  buttons.complete.addEventListener('click', function () { decide('complete'); });
  buttons.fail.addEventListener('click', function () { decide('fail'); });

  window.addEventListener('message', function (event) {
    if (event.origin !== PARENT || event.source !== window.parent) return;
    var m = event.data;
    if (!m || m.type !== 'challenge' || typeof m.client_secret !== 'string' || clientSecret) return;
    clientSecret = m.client_secret;
    buttons.complete.disabled = false;
    buttons.fail.disabled = false;
    buttons.complete.focus();
    showAmount();
  });
  // The overlay sizes the frame to the page (up to the window's height).
  function resized() { tell({type: 'resize', height: Math.ceil(document.documentElement.getBoundingClientRect().height)}); }
  if (window.ResizeObserver) new ResizeObserver(resized).observe(document.body);
  resized();
  tell({type: 'ready'});
})();
