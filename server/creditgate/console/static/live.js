// The live chart: decisions per second by outcome, drawn as SVG lines from /live.json (the console's samples of
// the server's own counters). No library: a few polylines and labels.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#147a3d", "#b42318", "#b54708", "#6941c6", "#2456c7", "#5d6878"];
  var chart = document.getElementById("chart");
  if (!chart) { return; }
  var legend = document.getElementById("legend");
  var interval = Math.max(1, parseFloat(chart.dataset.interval || "2")) * 1000;

  function node(name, attributes, parent) {
    var element = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach(function (key) { element.setAttribute(key, attributes[key]); });
    if (parent) { parent.appendChild(element); }
    return element;
  }

  function draw(data) {
    var width = chart.clientWidth || 600, height = chart.clientHeight || 220, left = 48, bottom = 22;
    var svg = node("svg", { viewBox: "0 0 " + width + " " + height, "data-points": data.points.length });
    var points = data.points, outcomes = data.outcomes;
    var top = 0.0;
    points.forEach(function (p) { outcomes.forEach(function (o) { top = Math.max(top, p.rates[o] || 0); }); });
    top = top > 0 ? top * 1.15 : 1;
    var plotW = width - left - 8, plotH = height - bottom - 8;
    [0, 0.5, 1].forEach(function (f) {
      var y = 8 + plotH * (1 - f);
      node("line", { x1: left, x2: width - 8, y1: y, y2: y, stroke: "#d9dee6" }, svg);
      var label = node("text", { x: left - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#5d6878" }, svg);
      label.textContent = (top * f).toFixed(top * f < 10 ? 1 : 0);
    });
    var axis = node("text", { x: left, y: height - 4, "font-size": 11, fill: "#5d6878" }, svg);
    axis.textContent = points.length ? "last " + Math.round(points[points.length - 1].at - points[0].at) + " s" : "waiting for samples";
    legend.textContent = "";
    outcomes.forEach(function (outcome, index) {
      var color = COLORS[index % COLORS.length];
      var coords = points.map(function (p, i) {
        var x = left + (points.length > 1 ? plotW * i / (points.length - 1) : plotW);
        var y = 8 + plotH * (1 - (p.rates[outcome] || 0) / top);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      node("polyline", { points: coords.join(" "), fill: "none", stroke: color, "stroke-width": 2,
        "data-outcome": outcome }, svg);
      var last = points.length ? points[points.length - 1].rates[outcome] || 0 : 0;
      var item = document.createElement("li");
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(outcome + ": " + last.toFixed(1) + "/s"));
      item.dataset.outcome = outcome;
      legend.appendChild(item);
    });
    chart.textContent = "";
    chart.appendChild(svg);
  }

  function refresh() {
    fetch(chart.dataset.source, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { if (!response.ok) { throw new Error(response.status); } return response.json(); })
      .then(draw)
      .catch(function () { chart.dataset.error = "1"; })
      .finally(function () { window.setTimeout(refresh, interval); });
  }
  refresh();
}());
