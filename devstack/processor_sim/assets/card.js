/* The card field (the simulator's /elements/card, inside the checkout page's iframe).
 *
 * It formats and checks what is typed, tells the parent page how the field stands ("change":
 * complete, empty, brand, error), and when the parent asks ("create") it tokenises the card
 * itself: POST /v1/payment_methods to its own origin with the publishable key, so the number goes
 * nowhere else. It talks only to the parent at the origin named in its address (?origin=), and
 * takes messages only from that parent at that origin.
 */
(function () {
  'use strict';
  var params = new URLSearchParams(location.search);
  var PARENT = params.get('origin');
  var KEY = params.get('key') || '';
  var ELEMENT = params.get('element') || '';
  var REQUEST_TIMEOUT_MS = 30000;
  if (!PARENT || window.parent === window) return;

  var form = document.getElementById('card');
  var fields = {number: document.getElementById('number'), exp: document.getElementById('exp'), cvc: document.getElementById('cvc')};
  var touched = {number: false, exp: false, cvc: false};

  function tell(message) {
    message.element = ELEMENT;
    window.parent.postMessage(message, PARENT);
  }

  function digits(s) { return String(s).replace(/\D/g, ''); }

  function brandOf(d) {
    if (/^4/.test(d)) return 'visa';
    if (/^(5[1-5]|2(2[2-9]|[3-6]\d|7[01]|720))/.test(d)) return 'mastercard';
    if (/^3[47]/.test(d)) return 'amex';
    if (/^6(011|5)/.test(d)) return 'discover';
    return 'unknown';
  }

  function luhn(d) {
    var sum = 0;
    for (var i = 0; i < d.length; i++) {
      var n = Number(d[d.length - 1 - i]);
      if (i % 2) { n *= 2; if (n > 9) n -= 9; }
      sum += n;
    }
    return sum % 10 === 0;
  }

  function numberLength(brand) { return brand === 'amex' ? 15 : 16; }

  function formatNumber(d) {
    var groups = brandOf(d) === 'amex' ? [4, 6, 5] : [4, 4, 4, 4];
    var out = [], at = 0;
    for (var i = 0; i < groups.length && at < d.length; i++) { out.push(d.slice(at, at + groups[i])); at += groups[i]; }
    return out.join(' ');
  }

  function formatExpiry(d) {
    if (d.length === 1 && d > '1') d = '0' + d;  // "4" can only be April
    return d.length > 2 ? d.slice(0, 2) + ' / ' + d.slice(2) : d;
  }

  function issue(code, message) { return {code: code, message: message}; }

  // Each field: {state: 'empty' | 'incomplete' | 'invalid' | 'complete', error}
  function checkNumber(d) {
    if (!d) return {state: 'empty', error: issue('incomplete_number', 'Your card number is incomplete.')};
    if (d.length < numberLength(brandOf(d))) return {state: 'incomplete', error: issue('incomplete_number', 'Your card number is incomplete.')};
    if (!luhn(d)) return {state: 'invalid', error: issue('incorrect_number', 'Your card number is invalid.')};
    return {state: 'complete'};
  }

  function checkExpiry(d) {
    var incomplete = issue('incomplete_expiry', "Your card's expiration date is incomplete.");
    if (!d) return {state: 'empty', error: incomplete};
    if (d.length < 4) return {state: 'incomplete', error: incomplete};
    var month = Number(d.slice(0, 2)), year = 2000 + Number(d.slice(2, 4)), now = new Date();
    if (month < 1 || month > 12) return {state: 'invalid', error: issue('invalid_expiry_month', "Your card's expiration month is invalid.")};
    if (year < now.getFullYear() || (year === now.getFullYear() && month < now.getMonth() + 1)) {
      return {state: 'invalid', error: issue('invalid_expiry_year', "Your card's expiration date is in the past.")};
    }
    return {state: 'complete'};
  }

  function checkCvc(d, brand) {
    var incomplete = issue('incomplete_cvc', "Your card's security code is incomplete.");
    if (!d) return {state: 'empty', error: incomplete};
    if (d.length < (brand === 'amex' ? 4 : 3)) return {state: 'incomplete', error: incomplete};
    if (d.length > (brand === 'amex' ? 4 : 3)) return {state: 'invalid', error: issue('invalid_cvc', "Your card's security code is invalid.")};
    return {state: 'complete'};
  }

  function status() {
    var number = digits(fields.number.value), brand = brandOf(number);
    return {
      brand: brand,
      checks: {number: checkNumber(number), exp: checkExpiry(digits(fields.exp.value)), cvc: checkCvc(digits(fields.cvc.value), brand)},
    };
  }

  // An invalid field shows at once; an incomplete one once it has been left.
  function shown(name, check, all) {
    return check.state === 'invalid' || (check.state !== 'complete' && (all || (touched[name] && check.state !== 'empty')));
  }

  function report(all) {
    var s = status(), error = null, names = ['number', 'exp', 'cvc'];
    for (var i = 0; i < names.length; i++) {
      var check = s.checks[names[i]], bad = shown(names[i], check, all);
      fields[names[i]].setAttribute('aria-invalid', bad ? 'true' : 'false');
      if (bad && !error) error = check.error;
    }
    var empty = names.every(function (n) { return s.checks[n].state === 'empty'; });
    var complete = names.every(function (n) { return s.checks[n].state === 'complete'; });
    return {empty: empty, complete: complete, brand: s.brand, error: error};
  }

  function changed() {
    var r = report(false);
    tell({type: 'change', empty: r.empty, complete: r.complete, brand: r.brand, error: r.error});
  }

  // Reformat while keeping the caret after the same number of digits.
  function reformat(input, format, maxDigits) {
    var caret = input.selectionStart == null ? input.value.length : input.selectionStart;
    var before = digits(input.value.slice(0, caret)).length;
    var d = digits(input.value).slice(0, maxDigits);
    var value = format(d);
    input.value = value;
    var pos = 0, seen = 0;
    while (pos < value.length && seen < before) { if (/\d/.test(value[pos])) seen++; pos++; }
    if (document.activeElement === input) input.setSelectionRange(pos, pos);
  }

  fields.number.addEventListener('input', function () {
    reformat(fields.number, formatNumber, numberLength(brandOf(digits(fields.number.value))));
    changed();
    var d = digits(fields.number.value);
    if (checkNumber(d).state === 'complete' && fields.number.selectionStart === fields.number.value.length) fields.exp.focus();
  });
  fields.exp.addEventListener('input', function (event) {
    // Deleting the " / " deletes the month's last digit too, not nothing.
    if (event.inputType === 'deleteContentBackward' && /^\d\d \/?$/.test(fields.exp.value)) fields.exp.value = fields.exp.value.slice(0, 1);
    reformat(fields.exp, formatExpiry, 4);
    changed();
    if (checkExpiry(digits(fields.exp.value)).state === 'complete') fields.cvc.focus();
  });
  fields.cvc.addEventListener('input', function () {
    reformat(fields.cvc, function (d) { return d; }, 4);
    changed();
  });
  Object.keys(fields).forEach(function (name) {
    fields[name].addEventListener('blur', function () { touched[name] = true; changed(); tell({type: 'blur'}); });
    fields[name].addEventListener('focus', function () { tell({type: 'focus'}); });
  });
  form.addEventListener('submit', function (event) { event.preventDefault(); });

  function create(request) {
    var r = report(true);
    changed();
    if (r.error) {
      tell({type: 'result', request: request, result: {error: {type: 'validation_error', code: r.error.code, message: r.error.message}}});
      return;
    }
    var exp = digits(fields.exp.value);
    var body = new URLSearchParams({
      type: 'card',
      'card[number]': digits(fields.number.value),
      'card[exp_month]': exp.slice(0, 2),
      'card[exp_year]': exp.slice(2, 4),
      'card[cvc]': digits(fields.cvc.value),
    });
    var abort = new AbortController();
    var timer = setTimeout(function () { abort.abort(); }, REQUEST_TIMEOUT_MS);
    fetch('/v1/payment_methods', {
      method: 'POST',
      headers: {Authorization: 'Bearer ' + KEY, 'Content-Type': 'application/x-www-form-urlencoded'},
      body: body.toString(),
      credentials: 'omit',
      cache: 'no-store',
      signal: abort.signal,
    })
      .then(function (resp) { return resp.json().then(function (json) { return resp.ok ? {paymentMethod: json} : {error: json.error}; }); })
      .catch(function () { return {error: {type: 'api_connection_error', message: 'Could not reach the payment processor. Try again.'}}; })
      .then(function (result) { clearTimeout(timer); tell({type: 'result', request: request, result: result}); });
  }

  window.addEventListener('message', function (event) {
    if (event.origin !== PARENT || event.source !== window.parent) return;
    var m = event.data;
    if (!m || typeof m !== 'object' || m.element !== ELEMENT) return;
    if (m.type === 'create') create(String(m.request));
    else if (m.type === 'focus') fields.number.focus();
    else if (m.type === 'blur' && document.activeElement && document.activeElement.blur) document.activeElement.blur();
    else if (m.type === 'clear') {
      Object.keys(fields).forEach(function (name) { fields[name].value = ''; touched[name] = false; });
      changed();
    }
  });

  function resized() { tell({type: 'resize', height: Math.ceil(document.documentElement.getBoundingClientRect().height)}); }
  if (window.ResizeObserver) new ResizeObserver(resized).observe(document.body);
  resized();
  tell({type: 'ready'});
})();
