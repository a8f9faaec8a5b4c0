(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("run-data").textContent);

  // Pages of the flagged table: data-page-size rows at a time, the others hidden (their
  // decisions still count). The server renders page 1; sorting re-pages the sorted rows.
  var flagged = document.getElementById("flagged");
  var pageSize = flagged ? Number(flagged.getAttribute("data-page-size")) || 50 : 50;
  var currentPage = 1;
  function showPage(page) {
    var rows = flagged.tBodies[0].rows;
    var pages = Math.max(1, Math.ceil(rows.length / pageSize));
    currentPage = Math.min(Math.max(1, page), pages);
    for (var k = 0; k < rows.length; k += 1) {
      var p = Math.floor(k / pageSize) + 1;
      rows[k].setAttribute("data-page", String(p));
      rows[k].hidden = p !== currentPage;
    }
    var first = (currentPage - 1) * pageSize + 1;
    var last = Math.min(rows.length, currentPage * pageSize);
    document.querySelectorAll('.pager[data-table="flagged"]').forEach(function (nav) {
      nav.querySelectorAll("button[data-page]").forEach(function (b) {
        if (Number(b.getAttribute("data-page")) === currentPage) {
          b.setAttribute("aria-current", "page");
        } else {
          b.removeAttribute("aria-current");
        }
      });
      nav.querySelector('[data-step="-1"]').disabled = currentPage === 1;
      nav.querySelector('[data-step="1"]').disabled = currentPage === pages;
      nav.querySelector(".page-status").textContent =
        "rows " + first + "\u2013" + last + " of " + rows.length;
    });
  }
  document.querySelectorAll('.pager[data-table="flagged"]').forEach(function (nav) {
    nav.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (!button) { return; }
      var step = button.getAttribute("data-step");
      showPage(step ? currentPage + Number(step) : Number(button.getAttribute("data-page")));
      if (nav.getBoundingClientRect().top > window.innerHeight / 2) {  // the pager below
        flagged.scrollIntoView({ block: "start" });
      }
    });
  });

  // Sortable tables: click a header with data-type="num" or "text"; cells sort by data-sort.
  function cellKey(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    return numeric ? (raw === "" ? NaN : parseFloat(raw)) : raw.trim().toLowerCase();
  }
  function sortBy(table, th) {
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, col, numeric), y = cellKey(b, col, numeric);
      if (numeric) {
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
        return (x - y) * dir;
      }
      return x.localeCompare(y) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    if (table === flagged) { showPage(1); }  // sorting sorts every page, then shows the first
  }
  document.querySelectorAll("table.sortable th[data-type]").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th.closest("table"), th); });
  });

  // Review decisions: only the points the reviewer set are exported, training points
  // (the flagged rows) first, then test points (their panels, marked "split": "test").
  function collect(selector, indexAttr, prefix, ids, split) {
    var out = [];
    document.querySelectorAll(selector).forEach(function (holder) {
      var index = holder.getAttribute(indexAttr);
      var checked = holder.querySelector('input[name="' + prefix + "action-" + index + '"]:checked');
      holder.removeAttribute("data-decision");
      if (!checked) { return; }
      var item = { index: Number(index), id: ids[index], action: checked.value };
      if (split) { item.split = split; }
      if (checked.value === "relabel") {
        var label = holder.querySelector('[name="' + prefix + "label-" + index + '"]').value.trim();
        if (label === "") { return; }
        item.label = label;
      }
      holder.setAttribute("data-decision", checked.value);
      out.push(item);
    });
    return out.sort(function (a, b) { return a.index - b.index; });
  }
  function decisions() {
    return collect("tr[data-index]", "data-index", "", data.ids, null).concat(
      collect(".test-decide[data-test-index]", "data-test-index", "test-", data.test_ids, "test"));
  }
  function update() {
    var list = decisions();
    var counts = { keep: 0, relabel: 0, remove: 0 };
    list.forEach(function (d) { counts[d.action] += 1; });
    document.getElementById("decision-count").textContent = String(list.length);
    document.getElementById("decision-detail").textContent = list.length
      ? "(" + counts.keep + " keep, " + counts.relabel + " relabel, " + counts.remove + " remove)" : "";
  }
  function onEdit(event) {
    var target = event.target;
    var name = target.getAttribute("name") || "";
    var label = /^(test-)?label-(.+)$/.exec(name);
    if (label) {  // choosing a new label means "relabel"
      var radio = document.querySelector(
        'input[name="' + (label[1] || "") + "action-" + label[2] + '"][value="relabel"]');
      if (radio) { radio.checked = true; }
    }
    if (/^(test-)?(action|label)-/.test(name)) { update(); }
  }
  document.addEventListener("change", onEdit);
  document.addEventListener("input", onEdit);  // typing a new regression target
  document.getElementById("clear-decisions").addEventListener("click", function () {
    document.querySelectorAll('tr[data-index] input[type="radio"], .test-decide input[type="radio"]')
      .forEach(function (r) { r.checked = false; });
    update();
  });
  document.getElementById("download-decisions").addEventListener("click", function () {
    var payload = { run: data.run, data_fingerprint: data.data_fingerprint, decisions: decisions() };
    var blob = new Blob([JSON.stringify(payload, null, 1) + "\n"], { type: "application/json" });
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "decisions-run-" + data.run + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
  });
  update();
})();
