/* The hosted checkout page's script: no build step, no dependencies but the card processor's own
   script (Stripe.js in production, the simulator's look-alike in development), which owns the card
   field. It talks to /checkout/api/... with the session token; the server decides everything. */
(function () {
  'use strict';

  var API_TIMEOUT_MS = 30000;
  var POLLS_MAX = 30;
  var REDIRECT_DELAY_MS = 1500;

  var $ = function (id) { return document.getElementById(id); };
  var boot = JSON.parse($('invo-boot').textContent);
  var session = boot.session;
  var main = $('checkout');
  var embedded = window.parent !== window;
  var stripe = typeof window.Stripe === 'function' ? window.Stripe(boot.processor.publishable_key) : null;
  var card = null;
  var busy = false;
  var notified = false;
  var lastFocus = null;
  var retry = null;  // what "Try again" does: the last request, sent again (the server dedupes it)

  var PANELS = {
    select: 'panel-select', review: 'panel-select', card: 'panel-card',
    success: 'panel-result', declined: 'panel-result', failed: 'panel-result',
    cancelled: 'panel-result', limit: 'panel-result'
  };

  // An attribute, not the `hidden` property: an <svg> has no such property.
  function show(id, on) { $(id).toggleAttribute('hidden', !on); }

  function setState(name, message) {
    var waiting = name === 'processing' || name === 'requires_action';
    main.setAttribute('data-state', name);
    // While a payment is under way the panel it started from stays in place, inert (a second click
    // lands on a disabled button, not on whatever would move up under the pointer).
    ['panel-select', 'panel-card', 'panel-result'].forEach(function (p) {
      if (waiting) { if (p === 'panel-result') show(p, false); }
      else show(p, PANELS[name] === p);
      $(p).toggleAttribute('inert', waiting || dialogOpen());
    });
    show('try-another-card', name === 'declined');
    show('try-again', name === 'failed');
    show('continue-link', name === 'success' && !embedded);
    show('success-icon', name === 'success');
    show('cancel-checkout', ['select', 'card', 'review', 'declined', 'failed', 'limit'].indexOf(name) >= 0);
    var status = $('status');
    status.textContent = message || '';
    status.className = 'status ' + name;
    busy = waiting;
    main.setAttribute('aria-busy', waiting ? 'true' : 'false');
    $('pay-button').disabled = waiting;
    $('complete-purchase').disabled = waiting;
    // Where the keyboard goes next: the one action the state offers, not the top of the page
    // (the button that had focus may just have been hidden).
    var next = {declined: 'try-another-card', failed: 'try-again', success: embedded ? '' : 'continue-link'}[name];
    if (next) $(next).focus();
    else if (document.activeElement && document.activeElement !== document.body &&
             document.activeElement.offsetParent === null) main.focus();
  }

  function api(method, path, body) {
    var ctrl = new AbortController();
    var timer = setTimeout(function () { ctrl.abort(); }, API_TIMEOUT_MS);
    return fetch('/checkout/api/' + path, {
      method: method,
      headers: {'Authorization': 'Bearer ' + boot.token, 'Content-Type': 'application/json'},
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      signal: ctrl.signal
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (b) { return {status: resp.status, body: b}; });
    }, function () {
      return {status: 0, body: {}};
    }).then(function (res) { clearTimeout(timer); return res; });
  }

  function brand(name) {
    var b = String(name || 'card');
    return b === 'mastercard' ? 'Mastercard' : b === 'amex' ? 'American Express' : b.charAt(0).toUpperCase() + b.slice(1);
  }

  function expiry(c) { return ('0' + c.exp_month).slice(-2) + '/' + ('0' + (c.exp_year % 100)).slice(-2); }

  // -- answers ------------------------------------------------------------------------------

  function handle(res) {
    var b = res.body || {};
    if (res.status === 200 && b.status === 'success') return succeed(b.currency_received, b.new_balance, b.order_id);
    if (res.status === 200 && b.status === 'requires_action') return challenge(b.client_secret);
    if (res.status === 200 && b.status === 'pending') return poll(0);
    return refused(res);
  }

  function refused(res) {
    var b = res.body || {};
    var code = b.error_code || '';
    if (code === 'SESSION_ALREADY_CONSUMED' || code === 'SESSION_EXPIRED' || code === 'SESSION_CANCELLED' ||
        code === 'INVALID_SESSION') {
      location.reload();  // the server renders the page that says so
      return;
    }
    if (code === 'PAYMENT_IN_PROGRESS') return poll(0);
    if (res.status === 402 || res.status === 400) {
      return setState('declined', (b.message || 'Your card was declined.') + ' Nothing was charged.');
    }
    if (res.status === 429 && code !== 'RATE_LIMITED') return setState('limit', b.message || 'A purchase limit was reached.');
    setState('failed', 'The payment could not be completed right now. Try again in a moment.');
  }

  function poll(n) {
    setState('processing', 'Processing your payment…');
    api('GET', 'session').then(function (res) {
      var o = res.status === 200 && res.body.order;
      if (o && o.status === 'completed') return succeed(o.currency_received, o.new_balance, o.order_id);
      if (o && o.status === 'requires_action' && o.client_secret) return challenge(o.client_secret);
      if (o && (o.status === 'failed' || o.status === 'cancelled')) {
        return setState('declined', (o.failure_message || 'The payment did not go through.') + ' Nothing was charged.');
      }
      if (res.status !== 200 && res.status !== 0) return refused(res);
      if (n + 1 >= POLLS_MAX) return setState('failed', 'The payment is taking longer than usual. Try again in a moment.');
      setTimeout(function () { poll(n + 1); }, 1000);
    });
  }

  function challenge(clientSecret) {
    setState('requires_action', 'Confirm the payment with your bank…');
    if (!stripe) return setState('failed', 'The card processor could not be reached. Try again in a moment.');
    stripe.confirmCardPayment(clientSecret).then(function () {
      // Passed or not, the server asks the processor and settles the order (confirm-payment's path).
      retry = function () { api('POST', 'confirm', {}).then(handle); };
      return api('POST', 'confirm', {}).then(handle);
    });
  }

  function succeed(received, balance, orderId) {
    setState('success', 'Payment complete. You received ' + received + ' ' + session.currency_name +
      (balance ? '. New balance: ' + balance + '.' : '.'));
    if (notified) return;
    notified = true;
    if (embedded) {
      post({type: 'INVO_CHECKOUT_COMPLETE', data: {
        status: 'success', currency_received: received, new_balance: balance || null,
        session_id: session.session_id, order_id: orderId
      }});
    } else {
      setTimeout(function () { location.assign(session.success_url); }, REDIRECT_DELAY_MS);
    }
  }

  // Only ever to the partner's own origin (success_url's), never '*': the message names the order.
  function post(message) {
    if (!boot.success_origin) return;
    try { window.parent.postMessage(message, boot.success_origin); } catch (e) { /* a parent elsewhere: the webhook still tells */ }
  }

  // -- choosing a card ----------------------------------------------------------------------

  function choose() {
    if (session.saved_cards.length) {
      renderCards();
      setState('select');
    } else {
      cardForm();
    }
  }

  function renderCards() {
    var list = $('saved-cards');
    list.textContent = '';
    session.saved_cards.forEach(function (c) {
      var li = document.createElement('li');
      var pick = document.createElement('button');
      pick.type = 'button';
      pick.className = 'saved-card';
      pick.setAttribute('data-card-id', c.id);
      var name = document.createElement('span');
      name.className = 'card-name';
      name.textContent = brand(c.brand) + ' •••• ' + c.last4;
      var exp = document.createElement('span');
      exp.className = 'expires';
      exp.textContent = 'expires ' + expiry(c);
      var sep = document.createElement('span');
      sep.className = 'sr-only';
      sep.textContent = ', ';  // so the button reads "Visa •••• 4242, expires 12/34"
      pick.appendChild(name);
      pick.appendChild(sep);
      pick.appendChild(exp);
      pick.addEventListener('click', function () { review(c, pick); });
      var remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'remove-card button link';
      remove.setAttribute('data-card-id', c.id);
      remove.setAttribute('aria-label', 'Remove ' + brand(c.brand) + ' ending ' + c.last4);
      remove.textContent = 'Remove';
      remove.addEventListener('click', function () { remove.disabled = true; removeCard(c.id); });
      li.appendChild(pick);
      li.appendChild(remove);
      list.appendChild(li);
    });
  }

  function removeCard(id) {
    api('DELETE', 'cards/' + encodeURIComponent(id)).then(function (res) {
      if (res.status !== 200) return refused(res);
      session.saved_cards = res.body.saved_cards || [];
      choose();
      $('status').textContent = 'Card removed.';
      var first = document.querySelector('.saved-card');
      (first || $('pay-button')).focus();
    });
  }

  function cardForm() {
    setState('card');
    show('back-to-cards', session.saved_cards.length > 0);
    if (!stripe) return setState('failed', 'The card form could not load. Try again in a moment.');
    if (!card) {
      card = stripe.elements().create('card');
      card.mount('#card-element');
      card.on('change', function (e) { $('card-error').textContent = e.error ? e.error.message : ''; });
    }
  }

  function payWithNewCard() {
    if (busy) return;
    setState('processing', 'Processing your payment…');
    stripe.createPaymentMethod({type: 'card', card: card}).then(function (r) {
      if (r.error) {
        setState('card');
        $('card-error').textContent = r.error.message || 'Check the card details.';
        return;
      }
      var body = {payment_method_id: r.paymentMethod.id, save_card: $('save-card').checked};
      retry = function () { api('POST', 'pay', body).then(handle); };
      return api('POST', 'pay', body).then(handle);
    });
  }

  // -- the review dialog --------------------------------------------------------------------

  var reviewing = null;

  function review(c, opener) {
    reviewing = c;
    lastFocus = opener;
    $('review-card').textContent = brand(c.brand) + ' •••• ' + c.last4;
    show('review-backdrop', true);
    setInert(true);
    setState('review');
    $('complete-purchase').focus();
  }

  function closeReview(returnFocus) {
    show('review-backdrop', false);
    setInert(false);
    if (main.getAttribute('data-state') === 'review') setState('select');
    if (returnFocus && lastFocus) lastFocus.focus();
  }

  function completePurchase() {
    if (busy || !reviewing) return;
    var body = {payment_method_id: reviewing.id, save_card: false};
    closeReview(false);
    setState('processing', 'Processing your payment…');
    retry = function () { api('POST', 'pay', body).then(handle); };
    api('POST', 'pay', body).then(handle);
  }

  function setInert(on) {
    Array.prototype.forEach.call(main.children, function (el) {
      if (el.id === 'review-backdrop' || el.id === 'status' || el.tagName === 'SCRIPT') return;
      if (on) el.setAttribute('inert', ''); else el.removeAttribute('inert');
    });
  }

  function dialogOpen() { return !$('review-backdrop').hidden; }

  document.addEventListener('keydown', function (e) {
    if (!dialogOpen()) return;
    if (e.key === 'Escape') { e.preventDefault(); if (!busy) closeReview(true); return; }
    if (e.key !== 'Tab') return;
    var first = $('complete-purchase');
    var last = $('review-cancel');
    var inside = $('review-dialog').contains(document.activeElement);
    if (e.shiftKey && (document.activeElement === first || !inside)) { e.preventDefault(); last.focus(); }
    else if (!e.shiftKey && (document.activeElement === last || !inside)) { e.preventDefault(); first.focus(); }
  });
  // A click on the dimmed page behind the dialog keeps focus in the dialog.
  $('review-backdrop').addEventListener('mousedown', function (e) {
    if (e.target === this) { e.preventDefault(); $('complete-purchase').focus(); }
  });

  // -- cancel -------------------------------------------------------------------------------

  function cancel() {
    if (busy) return;
    api('POST', 'cancel', {}).then(function (res) {
      if (res.status !== 200) return refused(res);
      setState('cancelled', 'Checkout cancelled. Nothing was charged.');
      if (embedded) {
        post({type: 'INVO_CHECKOUT_COMPLETE', data: {
          status: 'cancelled', cancel_url: res.body.cancel_url, session_id: session.session_id
        }});
      } else {
        location.assign(res.body.cancel_url);
      }
    });
  }

  $('use-new-card').addEventListener('click', cardForm);
  $('back-to-cards').addEventListener('click', choose);
  $('pay-button').addEventListener('click', payWithNewCard);
  $('complete-purchase').addEventListener('click', completePurchase);
  $('review-cancel').addEventListener('click', function () { closeReview(true); });
  $('try-another-card').addEventListener('click', function () {
    choose();
    var first = document.querySelector('.saved-card');
    if (first && !$('panel-select').hidden) first.focus();
    else if (card) card.focus();
  });
  $('try-again').addEventListener('click', function () {
    if (retry) { setState('processing', 'Processing your payment…'); retry(); } else { choose(); }
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
