(function () {
  "use strict";
  function key(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent.trim();
    if (raw === "") return null;
    return numeric ? parseFloat(raw) : raw;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
        var sign = dir === "ascending" ? 1 : -1;
        var numeric = th.getAttribute("data-type") === "number";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir);
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var ka = key(a, col, numeric), kb = key(b, col, numeric), c;
          if (ka === null || kb === null) c = (ka === null) - (kb === null);
          else if (numeric) c = sign * (ka - kb);
          else c = sign * ka.localeCompare(kb, "en", {numeric: true});
          return c || (Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order")));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
