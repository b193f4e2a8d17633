/*
 * SendGuard for Gmail: everything that knows Gmail's compose DOM, in one place.
 *
 * Gmail publishes no API for its web UI, so these selectors follow the compose window's observed
 * structure (docs/gmail-addon.md says which versions): the Send button is a role="button" whose
 * data-tooltip/aria-label starts with "Send" (or the UI language's word), recipients are chips that
 * carry the address in data-hovercard-id (older UI: span[email]) inside the row of the field's input
 * (name="to" | "cc" | "bcc"), the subject is input[name="subjectbox"], the body the contenteditable
 * textbox, attachments the chips holding input[name="attach"] (name in .vI, size in .vJ).
 * When a selector stops matching, the reader returns nothing and the content script stops the send
 * (fail closed) instead of guessing.
 */
(function (global) {
  "use strict";

  var SEND_WORDS = /^(send|送信|发送|發送|傳送|senden|envoyer|enviar|invia|verzenden|보내기)(\b|\s|$|\s*\()/i;
  var NOT_SEND = /(schedule|more send options|予約|その他の送信オプション|定时|排程)/i;
  var FIELDS = ["to", "cc", "bcc"];
  var EMAIL = /[^\s<>,;"']+@[^\s<>,;"']+\.[^\s<>,;"']+/g;

  function label(el) {
    return String(el.getAttribute("data-tooltip") || el.getAttribute("aria-label") || "").trim();
  }

  function looksLikeSend(button) {
    var text = label(button);
    return (button.classList.contains("aoO") || SEND_WORDS.test(text)) && !NOT_SEND.test(text);
  }

  // The compose window around an element: the smallest ancestor holding exactly one subject box and
  // a Send button (Gmail keeps the Send button outside the compose form).
  function composeRoot(el) {
    for (var node = el; node && node.nodeType === 1; node = node.parentElement) {
      if (!node.querySelectorAll) continue;
      var subjects = node.querySelectorAll('input[name="subjectbox"]').length;
      if (subjects > 1) return null;
      if (subjects === 1) {
        var buttons = node.querySelectorAll('[role="button"]');
        for (var i = 0; i < buttons.length; i++) {
          if (looksLikeSend(buttons[i])) return node;
        }
      }
    }
    return null;
  }

  // The Send button an event target belongs to, or null (dropdowns, schedule send, other buttons).
  function sendButtonOf(target) {
    if (!target || !target.closest) return null;
    var button = target.closest('[role="button"]');
    if (!button) return null;
    if (!looksLikeSend(button) || !composeRoot(button)) return null;
    return button;
  }

  function sendButtonIn(root) {
    var candidates = root.querySelectorAll('[role="button"]');
    for (var i = 0; i < candidates.length; i++) {
      if (sendButtonOf(candidates[i]) === candidates[i]) return candidates[i];
    }
    return null;
  }

  function fieldInput(root, field) {
    return root.querySelector('input[name="' + field + '"], textarea[name="' + field + '"]');
  }

  // The row of one recipient field: the nearest ancestor of its input that holds no other field.
  function fieldRow(root, field) {
    var input = fieldInput(root, field);
    if (!input) return null;
    var row = input;
    while (row.parentElement && row.parentElement !== root) {
      var up = row.parentElement;
      var others = FIELDS.filter(function (f) { return f !== field && up.querySelector('[name="' + f + '"]'); });
      if (others.length) break;
      row = up;
    }
    return row;
  }

  function chipsOf(row) {
    return Array.prototype.slice.call(row.querySelectorAll("[data-hovercard-id], span[email]"))
      .filter(function (chip) { return /@/.test(chipAddress(chip)); });
  }

  function chipAddress(chip) {
    return String(chip.getAttribute("data-hovercard-id") || chip.getAttribute("email") || "").trim();
  }

  function recipients(root, field) {
    var row = fieldRow(root, field);
    if (!row) return [];
    var out = chipsOf(row).map(function (chip) {
      return { address: chipAddress(chip), name: String(chip.getAttribute("data-name") || chip.getAttribute("name") || "") };
    });
    // An address typed but not yet turned into a chip is sent too: check it as well.
    var input = fieldInput(root, field);
    var typed = input && input.type !== "hidden" ? String(input.value || "").match(EMAIL) : null;
    (typed || []).forEach(function (address) { out.push({ address: address, name: "" }); });
    return out;
  }

  function parseSize(text) {
    var m = /([\d.,]+)\s*(bytes?|[KMG])?/i.exec(String(text || ""));
    if (!m) return 0;
    var n = parseFloat(m[1].replace(/,/g, ""));
    var unit = (m[2] || "").toUpperCase().charAt(0);
    var factor = unit === "K" ? 1024 : unit === "M" ? 1024 * 1024 : unit === "G" ? 1024 * 1024 * 1024 : 1;
    return Math.round(n * factor);
  }

  function attachmentChips(root) {
    return Array.prototype.slice.call(root.querySelectorAll('input[name="attach"]')).map(function (input) {
      return input.closest(".dL") || input.parentElement;
    });
  }

  function attachments(root) {
    return attachmentChips(root).map(function (chip, index) {
      var input = chip.querySelector('input[name="attach"]');
      var name = chip.querySelector(".vI");
      var size = chip.querySelector(".vJ");
      return {
        id: String((input && input.value) || "att-" + index),
        name: String(name ? name.textContent : "").trim(),
        size: parseSize(size ? size.textContent : ""),
        isInline: false
      };
    });
  }

  function sender(root) {
    var from = root.querySelector('input[name="from"]');
    var value = from ? String(from.value || "") : "";
    var found = value.match(EMAIL) || String(global.document.title || "").match(EMAIL);
    return found ? found[0] : "";
  }

  function body(root) {
    var editor = root.querySelector('div[contenteditable="true"][role="textbox"], div[g_editable="true"]');
    return editor ? String(editor.innerText || editor.textContent || "") : null;
  }

  // Everything the helper needs, or null when the compose window could not be read.
  function read(root) {
    var subject = root.querySelector('input[name="subjectbox"]');
    var text = body(root);
    if (!subject || text === null || !fieldInput(root, "to")) return null;
    return {
      from: sender(root),
      to: recipients(root, "to"),
      cc: recipients(root, "cc"),
      bcc: recipients(root, "bcc"),
      subject: String(subject.value || ""),
      body: text,
      attachments: attachments(root)
    };
  }

  function clickLikeAUser(el) {
    ["mousedown", "mouseup", "click"].forEach(function (type) {
      el.dispatchEvent(new MouseEvent(type, { bubbles: true, cancelable: true, view: global }));
    });
  }

  function removeRecipient(root, address) {
    var wanted = String(address).toLowerCase();
    var removed = false;
    FIELDS.forEach(function (field) {
      var row = fieldRow(root, field);
      if (!row) return;
      chipsOf(row).forEach(function (chip) {
        if (chipAddress(chip).toLowerCase() !== wanted) return;
        var x = chip.querySelector('[aria-label^="Remove"], [aria-label^="削除"], .afX, .vM');
        if (x) clickLikeAUser(x); else chip.remove();
        removed = true;
      });
    });
    return removed;
  }

  function removeAttachment(root, id) {
    var removed = false;
    attachmentChips(root).forEach(function (chip, index) {
      var input = chip.querySelector('input[name="attach"]');
      var chipId = String((input && input.value) || "att-" + index);
      if (chipId !== id) return;
      var x = chip.querySelector('[aria-label^="Remove"], [aria-label^="削除"], .vq');
      if (x) clickLikeAUser(x); else chip.remove();
      removed = true;
    });
    return removed;
  }

  function showBanner(root, text, kind) {
    var banner = root.querySelector("[data-sendguard-banner]");
    if (!banner) {
      banner = global.document.createElement("div");
      banner.setAttribute("data-sendguard-banner", "");
      banner.style.cssText = "margin:4px 8px;padding:6px 10px;border-radius:4px;font:13px/1.4 sans-serif;" +
        "background:#fff4e5;color:#5f370e;border:1px solid #f0b35c;white-space:pre-wrap";
      root.insertBefore(banner, root.firstChild);
    }
    banner.setAttribute("role", kind === "error" ? "alert" : "status");
    banner.setAttribute("data-kind", kind || "info");
    banner.textContent = "SendGuard: " + text;
  }

  function clearBanner(root) {
    var banner = root.querySelector("[data-sendguard-banner]");
    if (banner) banner.remove();
  }

  global.SendGuardGmail = {
    composeRoot: composeRoot,
    sendButtonOf: sendButtonOf,
    sendButtonIn: sendButtonIn,
    read: read,
    removeRecipient: removeRecipient,
    removeAttachment: removeAttachment,
    clickLikeAUser: clickLikeAUser,
    showBanner: showBanner,
    clearBanner: clearBanner,
    parseSize: parseSize
  };
})(typeof window !== "undefined" ? window : this);
