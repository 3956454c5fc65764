/* The processor simulator's stand-in for Stripe.js v3: the subset a hosted checkout page uses.
 *
 *   var stripe = Stripe('pk_...');
 *   var card = stripe.elements().create('card');
 *   card.mount('#card');  card.on('change', fn);  card.focus();  card.clear();  card.unmount();
 *   stripe.createPaymentMethod({type: 'card', card: card})  -> {paymentMethod} | {error}
 *   stripe.confirmCardPayment(clientSecret)                  -> {paymentIntent} | {error}
 *   stripe.retrievePaymentIntent(clientSecret)               -> {paymentIntent} | {error}
 *
 * The card's number never enters this page: the field is an iframe from the simulator's origin
 * (/elements/card) that tokenises it itself; this script only asks it to, by postMessage to that
 * origin, and takes answers only from that iframe. A 3-D Secure challenge is the simulator's page
 * (/3ds/challenge) in a full-screen overlay. Plain script, no build step, no globals but Stripe.
 */
(function () {
  'use strict';
  if (window.Stripe) return;

  var script = document.currentScript;
  // The simulator serves this script, its frames and its API from one origin.
  var SIM = new URL(script && script.src ? script.src : '/', location.href).origin;
  var FRAME_HEIGHT_MIN_PX = 40;
  var FRAME_HEIGHT_MAX_PX = 320;
  var sequence = 0;

  function integrationError(message) {
    var err = new Error(message);
    err.name = 'IntegrationError';
    return err;
  }

  function apiCall(key, method, path, form) {
    var init = {method: method, headers: {Authorization: 'Bearer ' + key}, credentials: 'omit', cache: 'no-store'};
    if (form) {
      init.headers['Content-Type'] = 'application/x-www-form-urlencoded';
      init.body = new URLSearchParams(form).toString();
    }
    return fetch(SIM + path, init)
      .then(function (resp) { return resp.json(); })
      .catch(function () {
        return {error: {type: 'api_connection_error', message: 'Could not reach the payment processor. Try again.'}};
      });
  }

  function intentId(clientSecret) {
    var m = /^(pi_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+$/.exec(String(clientSecret || ''));
    if (!m) throw integrationError('Invalid value for clientSecret: expected a PaymentIntent client secret.');
    return m[1];
  }

  function frameUrl(path, params) {
    return SIM + path + '?' + new URLSearchParams(params).toString();
  }

  // -- the card Element ------------------------------------------------------------------------

  function CardElement(stripe) {
    this._stripe = stripe;
    this._id = 'card-' + (++sequence) + '-' + Math.random().toString(36).slice(2, 10);
    this._handlers = {};
    this._pending = {};
    this._outbox = [];
    this._frame = null;
    this._ready = false;
    this._onMessage = this._onMessage.bind(this);
  }

  CardElement.prototype.mount = function (target) {
    var host = typeof target === 'string' ? document.querySelector(target) : target;
    if (!host || typeof host.appendChild !== 'function') {
      throw integrationError('The selector you specified (' + target + ') applies to no DOM elements.');
    }
    if (this._frame) throw integrationError('This Element is already mounted.');
    var frame = document.createElement('iframe');
    frame.title = 'Secure card payment input frame';
    frame.name = this._id;
    frame.setAttribute('scrolling', 'no');
    frame.setAttribute('allowtransparency', 'true');
    // Property by property (CSSOM): a page whose CSP forbids inline styles still allows these.
    frame.style.border = '0';
    frame.style.display = 'block';
    frame.style.width = '100%';
    frame.style.minWidth = '0';
    frame.style.height = '66px';
    frame.style.overflow = 'hidden';
    frame.style.colorScheme = 'normal';
    frame.src = frameUrl('/elements/card', {origin: location.origin, key: this._stripe._key, element: this._id});
    window.addEventListener('message', this._onMessage);
    this._frame = frame;
    this._ready = false;
    host.appendChild(frame);
  };

  CardElement.prototype._onMessage = function (event) {
    if (!this._frame || event.origin !== SIM || event.source !== this._frame.contentWindow) return;
    var m = event.data;
    if (!m || typeof m !== 'object' || m.element !== this._id) return;
    if (m.type === 'ready') {
      this._ready = true;
      var queued = this._outbox.splice(0);
      for (var i = 0; i < queued.length; i++) this._send(queued[i]);
      this._emit('ready', {elementType: 'card'});
    } else if (m.type === 'resize') {
      var h = Math.max(FRAME_HEIGHT_MIN_PX, Math.min(FRAME_HEIGHT_MAX_PX, Math.ceil(Number(m.height) || 0)));
      this._frame.style.height = h + 'px';
    } else if (m.type === 'change') {
      var detail = {elementType: 'card', empty: !!m.empty, complete: !!m.complete, brand: String(m.brand || 'unknown')};
      if (m.error) detail.error = {type: 'validation_error', code: String(m.error.code), message: String(m.error.message)};
      this._emit('change', detail);
    } else if (m.type === 'focus' || m.type === 'blur') {
      this._emit(m.type, {elementType: 'card'});
    } else if (m.type === 'result' && this._pending[m.request]) {
      var resolve = this._pending[m.request];
      delete this._pending[m.request];
      resolve(m.result);
    }
  };

  CardElement.prototype._send = function (message) {
    message.element = this._id;
    if (!this._ready) { this._outbox.push(message); return; }
    this._frame.contentWindow.postMessage(message, SIM);
  };

  CardElement.prototype._request = function (message) {
    var self = this;
    if (!self._frame) {
      return Promise.reject(integrationError('We could not retrieve data from the specified Element: it is not mounted.'));
    }
    return new Promise(function (resolve) {
      message.request = 'r' + (++sequence);
      self._pending[message.request] = resolve;
      self._send(message);
    });
  };

  CardElement.prototype._emit = function (name, detail) {
    var list = (this._handlers[name] || []).slice();
    for (var i = 0; i < list.length; i++) list[i](detail);
  };

  CardElement.prototype.on = function (name, handler) {
    (this._handlers[name] = this._handlers[name] || []).push(handler);
    return this;
  };

  CardElement.prototype.off = function (name, handler) {
    var list = this._handlers[name] || [];
    this._handlers[name] = handler ? list.filter(function (h) { return h !== handler; }) : [];
    return this;
  };

  CardElement.prototype.focus = function () {
    if (!this._frame) return;
    this._frame.focus();  // the frame first: a frame may move focus only within itself
    this._send({type: 'focus'});
  };

  CardElement.prototype.blur = function () { this._send({type: 'blur'}); };

  CardElement.prototype.clear = function () { if (this._frame) this._send({type: 'clear'}); };

  CardElement.prototype.unmount = function () {
    if (!this._frame) return;
    window.removeEventListener('message', this._onMessage);
    if (this._frame.parentNode) this._frame.parentNode.removeChild(this._frame);
    this._frame = null;
    this._ready = false;
    this._outbox = [];
    var pending = this._pending;
    this._pending = {};
    Object.keys(pending).forEach(function (k) {
      pending[k]({error: {type: 'validation_error', code: 'element_unmounted', message: 'The card field was removed.'}});
    });
  };

  CardElement.prototype.destroy = CardElement.prototype.unmount;

  function Elements(stripe) { this._stripe = stripe; }

  Elements.prototype.create = function (type) {
    if (type !== 'card') throw integrationError('Only the "card" Element is available from the simulator.');
    return new CardElement(this._stripe);
  };

  // -- 3-D Secure --------------------------------------------------------------------------------

  function challenge(key, pi, clientSecret) {
    return new Promise(function (resolve) {
      var previous = document.activeElement;
      var overlay = document.createElement('div');
      overlay.setAttribute('role', 'dialog');
      overlay.setAttribute('aria-modal', 'true');
      overlay.setAttribute('aria-label', '3-D Secure authentication');
      var s = overlay.style;
      s.position = 'fixed'; s.top = '0'; s.left = '0'; s.right = '0'; s.bottom = '0';
      s.zIndex = '2147483647'; s.background = 'rgba(0, 0, 0, 0.6)';
      s.display = 'flex'; s.alignItems = 'center'; s.justifyContent = 'center';
      var frame = document.createElement('iframe');
      frame.title = '3-D Secure authentication';
      var f = frame.style;
      f.border = '0'; f.borderRadius = '8px'; f.background = '#ffffff';
      f.width = 'min(420px, calc(100% - 24px))'; f.height = 'min(360px, calc(100% - 24px))';
      frame.src = frameUrl('/3ds/challenge', {origin: location.origin, key: key, payment_intent: pi.id});
      function onMessage(event) {
        if (event.origin !== SIM || event.source !== frame.contentWindow) return;
        var m = event.data;
        if (!m || typeof m !== 'object') return;
        if (m.type === 'ready') {
          // The secret goes by message, not in the frame's address (which servers and histories keep).
          frame.contentWindow.postMessage({type: 'challenge', client_secret: clientSecret}, SIM);
          frame.focus();
        } else if (m.type === 'resize') {
          var h = Math.max(FRAME_HEIGHT_MIN_PX, Math.ceil(Number(m.height) || 0));
          f.height = 'min(' + h + 'px, calc(100% - 24px))';
        } else if (m.type === 'done') {
          window.removeEventListener('message', onMessage);
          if (overlay.parentNode) overlay.parentNode.removeChild(overlay);
          if (previous && typeof previous.focus === 'function') previous.focus();
          resolve();
        }
      }
      window.addEventListener('message', onMessage);
      overlay.appendChild(frame);
      document.body.appendChild(overlay);
    });
  }

  function settle(answer) {
    if (answer.error) return {error: answer.error};
    var pi = answer;
    if (pi.status === 'succeeded' || pi.status === 'processing' || pi.status === 'requires_capture') {
      return {paymentIntent: pi};
    }
    var err = pi.last_payment_error;
    if (pi.status === 'requires_payment_method' && err) {
      var out = {type: err.type || 'card_error', code: err.code, message: err.message, payment_intent: pi};
      if (err.decline_code) out.decline_code = err.decline_code;
      return {error: out};
    }
    return {error: {
      type: 'invalid_request_error',
      code: 'payment_intent_unexpected_state',
      message: 'This PaymentIntent is ' + pi.status + '; it could not be confirmed.',
      payment_intent: pi,
    }};
  }

  // -- Stripe ------------------------------------------------------------------------------------

  function StripeClient(key) {
    this._key = key;
  }

  StripeClient.prototype.elements = function () { return new Elements(this); };

  StripeClient.prototype.createPaymentMethod = function (data) {
    if (!data || data.type !== 'card') throw integrationError('createPaymentMethod: only {type: "card"} is supported.');
    if (!(data.card instanceof CardElement)) throw integrationError('createPaymentMethod: `card` must be a card Element.');
    return data.card._request({type: 'create'});
  };

  StripeClient.prototype._readIntent = function (clientSecret) {
    var id = intentId(clientSecret);
    var path = '/v1/payment_intents/' + id + '?client_secret=' + encodeURIComponent(clientSecret);
    return apiCall(this._key, 'GET', path);
  };

  StripeClient.prototype.retrievePaymentIntent = function (clientSecret) {
    return this._readIntent(clientSecret).then(function (answer) {
      return answer.error ? {error: answer.error} : {paymentIntent: answer};
    });
  };

  StripeClient.prototype.confirmCardPayment = function (clientSecret, data) {
    var self = this;
    if (data && data.payment_method) {
      throw integrationError('The simulator confirms on the server: call confirmCardPayment(clientSecret) alone.');
    }
    return self._readIntent(clientSecret).then(function (answer) {
      if (answer.error || answer.status !== 'requires_action') return settle(answer);
      return challenge(self._key, answer, clientSecret)
        .then(function () { return self._readIntent(clientSecret); })
        .then(settle);
    });
  };

  window.Stripe = function (publishableKey) {
    if (typeof publishableKey !== 'string' || publishableKey.indexOf('pk_') !== 0) {
      throw integrationError('Invalid value for Stripe(): apiKey should be a publishable key (pk_...).');
    }
    return new StripeClient(publishableKey);
  };
})();
