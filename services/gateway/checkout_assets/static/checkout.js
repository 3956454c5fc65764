/* The hosted checkout page's script. No build step, no dependency but the card processor's own
   script (Stripe.js in production, the simulator's look-alike in development), which owns the card
   field and the 3-D Secure challenge. It talks to /checkout/api/... with the session token; the
   server decides every outcome, this script only shows it. No inline anything: the page's CSP
   forbids inline scripts and styles, so looks are classes and `hidden`. */
(function () {
  'use strict';

  var API_TIMEOUT_MS = 30000;
  var POLL_EVERY_MS = 1000;
  var POLLS_MAX = 30;
  var REDIRECT_DELAY_MS = 1500;

  var $ = function (id) { return document.getElementById(id); };
  var boot = JSON.parse($('invo-boot').textContent);
  var session = boot.session;
  var main = $('checkout');
  var embedded = window.parent !== window;
  var stripe = null;
  try {
    if (typeof window.Stripe === 'function') stripe = window.Stripe(boot.processor.publishable_key);
  } catch (e) { stripe = null; }

  var card = null;          // the processor's card Element, mounted once
  var busy = false;         // a payment is under way: every action control is disabled
  var notified = false;     // the partner hears INVO_CHECKOUT_COMPLETE once, whatever happens after
  var reviewing = null;     // the saved card the review dialog is about
  var opener = null;        // what had focus before the dialog opened (focus goes back there)
  var retry = null;         // what "Try again" sends again (the server's single-use session dedupes)
  var panel = null;         // the panel on show

  // Which panel each state shows; processing keeps the one the player acted in (disabled).
  var PANELS = {
    loading: null, select: 'panel-select', review: 'panel-select', card: 'panel-card',
    requires_action: 'panel-progress', success: 'panel-result', declined: 'panel-result',
    failed: 'panel-result', cancelled: 'panel-result', limit: 'panel-result'
  };
  var CANCELLABLE = ['select', 'card', 'review', 'declined', 'failed', 'limit'];

  function show(id, on) { $(id).hidden = !on; }

  function say(name, title, lines) {
    var status = $('status');
    status.textContent = '';
    status.className = 'status' + (title ? ' status-' + name : '');
    if (title) {
      var t = document.createElement('p');
      t.className = 'status-title';
      t.textContent = title;
      status.appendChild(t);
    }
    (lines || []).forEach(function (line) {
      if (!line) return;
      var p = document.createElement('p');
      p.textContent = line;
      status.appendChild(p);
    });
  }

  function setState(name, title, lines) {
    main.setAttribute('data-state', name);
    var target = name === 'processing' ? (panel === 'panel-card' || panel === 'panel-select' ? panel : 'panel-progress')
      : PANELS[name];
    ['panel-select', 'panel-card', 'panel-progress', 'panel-result'].forEach(function (p) { show(p, p === target); });
    panel = target;
    if (name !== 'review' && name !== 'processing') closeDialog(false);
    show('try-another-card', name === 'declined');
    show('try-again', name === 'failed');
    show('continue-link', name === 'success' && !embedded && !!session.success_url);
    show('return-link', name === 'cancelled' && !embedded && !!session.cancel_url);
    show('cancel-checkout', CANCELLABLE.indexOf(name) >= 0);
    busy = name === 'processing' || name === 'requires_action';
    main.setAttribute('aria-busy', busy ? 'true' : 'false');
    var controls = document.querySelectorAll('#content button, #content input, #review-dialog button');
    for (var i = 0; i < controls.length; i++) {
      var c = controls[i];
      if (c.getAttribute('data-expired') === 'true') continue;
      c.disabled = busy;
    }
    $('pay-button').classList.toggle('is-busy', busy && panel === 'panel-card');
    var inDialog = busy && !$('review-backdrop').hidden;
    $('complete-purchase').classList.toggle('is-busy', inDialog);
    $('review-progress').textContent = inDialog ? 'Processing your payment…' : '';
    say(name, title, lines);
    // The next step's control takes focus when the one the player used has gone.
    if (name === 'declined') focusSoon($('try-another-card'));
    if (name === 'failed') focusSoon($('try-again'));
  }

  function focusSoon(el) {
    // After the browser has applied `hidden`: an element shown in this task may not take focus yet.
    if (el) setTimeout(function () { if (!el.disabled && el.getClientRects().length) el.focus(); }, 0);
  }

  // -- the page API ---------------------------------------------------------------------------

  function api(method, path, body) {
    var ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = setTimeout(function () { if (ctrl) ctrl.abort(); }, API_TIMEOUT_MS);
    return fetch('/checkout/api/' + path, {
      method: method,
      headers: {'Authorization': 'Bearer ' + boot.token, 'Content-Type': 'application/json'},
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
      signal: ctrl ? ctrl.signal : undefined
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (b) { return {status: resp.status, body: b || {}}; });
    }, function () {
      return {status: 0, body: {}};  // timed out or the network is down: the outcome is unknown
    }).then(function (res) { clearTimeout(timer); return res; });
  }

  var GONE = ['SESSION_ALREADY_CONSUMED', 'SESSION_EXPIRED', 'SESSION_CANCELLED', 'INVALID_SESSION', 'TENANT_SUSPENDED'];
  var LIMITS = ['SPENDING_LIMIT_EXCEEDED', 'VELOCITY_LIMIT_EXCEEDED', 'TOO_MANY_DECLINES'];
  var DECLINES = ['CARD_DECLINED', 'AUTHENTICATION_FAILED', 'PAYMENT_CANCELED', 'INVALID_PAYMENT_METHOD'];

  function handle(res) {
    var b = res.body;
    if (res.status === 200 && b.status === 'success') return succeed(b.currency_received, b.new_balance, b.order_id);
    if (res.status === 200 && b.status === 'requires_action' && b.client_secret) return challenge(b.client_secret);
    if (res.status === 200 && b.status === 'pending') return poll(0);
    return refused(res);
  }

  function refused(res) {
    var b = res.body;
    var code = b.error_code || '';
    if (code === 'SESSION_ALREADY_CONSUMED') return fromSession(true);  // paid: perhaps by our own lost answer
    if (GONE.indexOf(code) >= 0) { location.reload(); return; }         // the server renders the page that says so
    if (code === 'PAYMENT_IN_PROGRESS') return poll(0);
    if (DECLINES.indexOf(code) >= 0) {
      var title = code === 'AUTHENTICATION_FAILED' ? 'Authentication failed' : 'Payment declined';
      return setState('declined', title, [b.message || 'Your card was declined.', 'Nothing was charged. You can use another card.']);
    }
    if (LIMITS.indexOf(code) >= 0) return setState('limit', 'Purchase limit reached', [b.message || 'A purchase limit was reached.']);
    if (res.status === 0) {
      return setState('failed', 'No answer from the payment service', ['Check your connection, then try again. You will not be charged twice.']);
    }
    setState('failed', 'Payment not completed', [
      code === 'PROCESSOR_UNAVAILABLE' && b.message ? b.message : 'The payment service is not available right now.',
      'Nothing was charged. Try again in a moment.'
    ]);
  }

  // What the server says of the session now: after a lost answer, a 409, or a reload.
  function fromSession(goneIfNothing) {
    return api('GET', 'session').then(function (res) {
      var o = res.status === 200 ? res.body.order : null;
      if (o && o.status === 'completed') return succeed(o.currency_received, o.new_balance, o.order_id);
      if (o && o.status === 'requires_action' && o.client_secret) return challenge(o.client_secret);
      if (o && o.status === 'pending_payment') return poll(0);
      if (goneIfNothing || (res.status !== 200 && res.status !== 0)) { location.reload(); return; }
      if (retry) return retry();
      choose();
    });
  }

  function poll(n) {
    if (n === 0) setState('processing', 'Processing your payment…', ['Keep this page open.']);
    api('GET', 'session').then(function (res) {
      var o = res.status === 200 ? res.body.order : null;
      if (o && o.status === 'completed') return succeed(o.currency_received, o.new_balance, o.order_id);
      if (o && o.status === 'requires_action' && o.client_secret) return challenge(o.client_secret);
      if (o && (o.status === 'failed' || o.status === 'cancelled')) {
        return setState('declined', 'Payment declined', [o.failure_message || 'The payment did not go through.', 'Nothing was charged.']);
      }
      if (res.status !== 200 && res.status !== 0) return refused(res);
      if (res.status === 200 && res.body.status && res.body.status !== 'open') { location.reload(); return; }
      if (n + 1 >= POLLS_MAX) {
        retry = function () { poll(0); };
        return setState('failed', 'Still processing', ['The payment is taking longer than usual. Try again to check on it.']);
      }
      setTimeout(function () { poll(n + 1); }, POLL_EVERY_MS);
    });
  }

  // -- 3-D Secure -------------------------------------------------------------------------------

  function challenge(clientSecret) {
    setState('requires_action', 'Confirm with your bank', ['Your bank asks you to confirm this payment.']);
    if (!stripe) {
      retry = function () { location.reload(); };
      return setState('failed', 'Payment not completed', ['The card processor could not be reached. Try again in a moment.']);
    }
    retry = function () { confirm(null); };
    try {
      stripe.confirmCardPayment(clientSecret).then(confirm, function () { confirm({error: {}}); });
    } catch (e) {
      confirm({error: {}});  // the server still knows how the payment stands
    }
  }

  // The server asks the processor and settles the order either way; a passed challenge is final
  // only once the server says success, a failed one shows the processor's reason.
  function confirm(result) {
    var failed = result && result.error;
    setState('processing', 'Processing your payment…', ['Keep this page open.']);
    api('POST', 'confirm', {}).then(function (res) {
      if (failed && !(res.status === 200 && res.body.status === 'success')) {
        if (GONE.indexOf(res.body.error_code || '') >= 0) return refused(res);
        return setState('declined', 'Authentication failed', [
          result.error.message || 'Your bank could not confirm this payment.', 'Nothing was charged. You can use another card.'
        ]);
      }
      handle(res);
    });
  }

  // -- the outcome ------------------------------------------------------------------------------

  function succeed(received, balance, orderId) {
    var amount = received || session.currency_amount;
    var lines = ['You received ' + amount + ' ' + session.currency_name];
    if (balance !== undefined && balance !== null && balance !== '') lines.push('New balance: ' + balance);
    if (!embedded) lines.push('Taking you back to the game…');
    setState('success', 'Payment complete', lines);
    focusSoon($('continue-link'));
    notify({status: 'success', currency_received: amount, new_balance: balance === undefined ? null : balance,
      session_id: session.session_id, order_id: orderId || null}, session.success_url);
  }

  function notify(data, url) {
    if (notified) return;
    notified = true;
    if (embedded) {
      // Only to the partner's own origin (success_url's): never '*', never without one.
      if (boot.success_origin) window.parent.postMessage({type: 'INVO_CHECKOUT_COMPLETE', data: data}, boot.success_origin);
    } else if (url) {
      if (data.status === 'success') setTimeout(function () { location.assign(url); }, REDIRECT_DELAY_MS);
      else location.assign(url);
    }
  }

  // -- choosing a card ---------------------------------------------------------------------------

  function brandName(name) {
    var b = String(name || 'card').toLowerCase();
    var known = {visa: 'Visa', mastercard: 'Mastercard', amex: 'Amex', discover: 'Discover',
      diners: 'Diners Club', jcb: 'JCB', unionpay: 'UnionPay'};
    return known[b] || b.charAt(0).toUpperCase() + b.slice(1);
  }

  function two(n) { return ('0' + (Number(n) % 100)).slice(-2); }
  function expiry(c) { return two(c.exp_month) + '/' + two(c.exp_year); }
  function expired(c) {
    var now = new Date();
    return Number(c.exp_year) * 12 + Number(c.exp_month) < now.getFullYear() * 12 + now.getMonth() + 1;
  }

  function el(tag, cls, text, attrs) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text) e.textContent = text;
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }

  // "Visa •••• 4242": the dots are for the eye, a screen reader hears "Visa ending 4242".
  function cardLabel(c, into) {
    into.appendChild(document.createTextNode(brandName(c.brand) + ' '));
    var digits = el('span', 'digits');  // "•••• 4242" never breaks across lines
    digits.appendChild(el('span', 'dots', '•••• ', {'aria-hidden': 'true'}));
    digits.appendChild(el('span', 'sr-only', 'ending '));
    digits.appendChild(document.createTextNode(c.last4));
    into.appendChild(digits);
  }

  function choose() {
    if (!session.saved_cards.length) return cardForm();
    renderCards();
    setState('select');
  }

  function renderCards() {
    var list = $('saved-cards');
    list.textContent = '';
    session.saved_cards.forEach(function (c) {
      var old = expired(c);
      var li = el('li', 'card-row');
      var pick = el('button', 'saved-card' + (old ? ' expired' : ''), '', {type: 'button', 'data-card-id': c.id, 'data-testid': 'saved-card'});
      var b = String(c.brand || 'card').toLowerCase().replace(/[^a-z]/g, '');
      pick.appendChild(el('span', 'brand brand-' + b, b === 'mastercard' ? 'MC' : b.toUpperCase().slice(0, 4), {'aria-hidden': 'true'}));
      var text = el('span', 'card-text');
      var name = el('span', 'card-name');
      cardLabel(c, name);
      text.appendChild(name);
      text.appendChild(el('span', 'expires', (old ? 'Expired ' : 'Expires ') + expiry(c)));
      pick.appendChild(text);
      if (old) { pick.disabled = true; pick.setAttribute('data-expired', 'true'); }
      pick.addEventListener('click', function () { review(c, pick); });
      var remove = el('button', 'remove-card button link', 'Remove', {type: 'button', 'data-card-id': c.id, 'data-testid': 'remove-card'});
      remove.appendChild(el('span', 'sr-only', ' ' + brandName(c.brand) + ' ending ' + c.last4));
      remove.addEventListener('click', function () { removeCard(c, remove); });
      li.appendChild(pick);
      li.appendChild(remove);
      list.appendChild(li);
    });
  }

  function removeCard(c, button) {
    if (busy || button.disabled) return;
    button.disabled = true;
    api('DELETE', 'cards/' + encodeURIComponent(c.id)).then(function (res) {
      var code = res.body.error_code || '';
      if (GONE.indexOf(code) >= 0) { location.reload(); return; }
      if (res.status !== 200) {
        button.disabled = false;
        return say('select', 'Card not removed', ['Try again in a moment.']);
      }
      session.saved_cards = res.body.saved_cards || [];
      choose();
      say('removed', '', [brandName(c.brand) + ' ending ' + c.last4 + ' removed.']);
      if (!session.saved_cards.length) { if (card) card.focus(); return; }
      focusSoon(document.querySelector('.saved-card:not([disabled])') || $('use-new-card'));
    });
  }

  function cardForm() {
    setState('card');
    show('back-to-cards', session.saved_cards.length > 0);
    if (!stripe) {
      retry = function () { location.reload(); };
      return setState('failed', 'The card form could not load', ['Check your connection, then try again.']);
    }
    if (!card) {
      card = stripe.elements().create('card');
      card.on('change', function (e) { $('card-error').textContent = e && e.error ? e.error.message : ''; });
      card.mount('#card-element');
    } else {
      card.clear();
    }
    $('card-error').textContent = '';
  }

  function payWithNewCard() {
    if (busy || !card) return;
    setState('processing', 'Processing your payment…', ['Keep this page open.']);  // disables the button now
    var save = $('save-card').checked;
    stripe.createPaymentMethod({type: 'card', card: card}).then(function (r) {
      if (!r || r.error || !r.paymentMethod) {
        setState('card');
        $('card-error').textContent = (r && r.error && r.error.message) || 'Check the card details.';
        card.focus();
        return;
      }
      var body = {payment_method_id: r.paymentMethod.id, save_card: save};
      retry = function () { send(body); };
      send(body);
    }, function () {
      setState('card');
      $('card-error').textContent = 'The card field did not answer. Try again.';
    });
  }

  function send(body) {
    setState('processing', 'Processing your payment…', ['Keep this page open.']);
    api('POST', 'pay', body).then(handle);
  }

  // -- the review dialog -------------------------------------------------------------------------

  function review(c, from) {
    if (busy) return;
    reviewing = c;
    opener = from;
    var into = $('review-card');
    into.textContent = '';
    cardLabel(c, into);
    $('content').setAttribute('inert', '');
    show('review-backdrop', true);
    setState('review');
    focusSoon($('review-title'));
  }

  function closeDialog(returnFocus) {
    if ($('review-backdrop').hidden) return;
    show('review-backdrop', false);
    $('content').removeAttribute('inert');
    $('complete-purchase').classList.remove('is-busy');
    $('review-progress').textContent = '';
    if (returnFocus && opener) focusSoon(opener);
  }

  function dismissReview() {
    if (busy) return;
    closeDialog(true);
    setState('select');
  }

  function completePurchase() {
    if (busy || !reviewing) return;
    var body = {payment_method_id: reviewing.id, save_card: false};
    retry = function () { send(body); };
    send(body);  // disables the button at once: a double click pays once
  }

  document.addEventListener('keydown', function (e) {
    if ($('review-backdrop').hidden) return;
    if (e.key === 'Escape' || e.key === 'Esc') { e.preventDefault(); dismissReview(); return; }
    if (e.key !== 'Tab') return;
    var inside = Array.prototype.filter.call($('review-dialog').querySelectorAll('button'), function (b) { return !b.disabled; });
    if (!inside.length) { e.preventDefault(); return; }
    var first = inside[0];
    var last = inside[inside.length - 1];
    var at = document.activeElement;
    if (e.shiftKey && (at === first || at === $('review-title'))) { e.preventDefault(); last.focus(); }
    else if (!e.shiftKey && at === last) { e.preventDefault(); first.focus(); }
  });
  // A click on the dimmed page outside the dialog closes it, as Cancel does (never pays).
  $('review-backdrop').addEventListener('click', function (e) { if (e.target === $('review-backdrop')) dismissReview(); });
  // Focus that escapes the dialog (a click on the backdrop, the browser's own UI) comes back to it.
  document.addEventListener('focusin', function (e) {
    if (!$('review-backdrop').hidden && !$('review-dialog').contains(e.target)) $('review-title').focus();
  });

  // -- cancel ------------------------------------------------------------------------------------

  function cancel() {
    if (busy) return;
    var button = $('cancel-checkout');
    button.disabled = true;
    api('POST', 'cancel', {}).then(function (res) {
      button.disabled = false;
      if (res.status !== 200) {
        if (GONE.indexOf(res.body.error_code || '') >= 0) { location.reload(); return; }
        return say('failed', 'Could not cancel', ['Try again in a moment.']);
      }
      var url = res.body.cancel_url || session.cancel_url;
      setState('cancelled', 'Checkout cancelled', ['Nothing was charged.', embedded ? '' : 'Taking you back to the game…']);
      notify({status: 'cancelled', cancel_url: url, session_id: session.session_id}, url);
    });
  }

  $('use-new-card').addEventListener('click', function () { if (!busy) { cardForm(); if (card) card.focus(); } });
  $('back-to-cards').addEventListener('click', function () { if (!busy) { choose(); focusSoon(document.querySelector('.saved-card:not([disabled])')); } });
  $('pay-button').addEventListener('click', payWithNewCard);
  $('complete-purchase').addEventListener('click', completePurchase);
  $('review-cancel').addEventListener('click', dismissReview);
  $('try-another-card').addEventListener('click', function () {
    retry = null;
    choose();
    if (main.getAttribute('data-state') === 'card' && card) card.focus();
    else focusSoon(document.querySelector('.saved-card:not([disabled])'));
  });
  $('try-again').addEventListener('click', function () {
    setState('processing', 'Checking your payment…', ['Keep this page open.']);
    fromSession(false);  // a payment that did go through is shown, not sent again
  });
  $('cancel-checkout').addEventListener('click', cancel);
  // Back to this page from the browser's cache: what the server says now, not what it said then.
  window.addEventListener('pageshow', function (e) { if (e.persisted) location.reload(); });

  // Where the session is: a challenge or a charge under way (a reload) resumes; else a card is chosen.
  var o = session.order;
  if (o && o.status === 'requires_action' && o.client_secret) challenge(o.client_secret);
  else if (o && o.status === 'pending_payment') poll(0);
  else if (o && o.status === 'completed') succeed(o.currency_received, o.new_balance, o.order_id);
  else choose();
})();
