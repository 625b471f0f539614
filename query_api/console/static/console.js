// The console's script layer: charts from the JSON blocks the pages carry, and the time
// slider reading /console/leads/{id}/as-of. No inline scripts (the CSP forbids them).
"use strict";

function json(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function scoreChart() {
  const data = json("score-data");
  const canvas = document.getElementById("score-chart");
  if (!data || !canvas || !window.Chart) return;
  const points = data.points;
  canvas.dataset.points = String(points.length);
  new Chart(canvas, {
    type: "line",
    data: {
      datasets: [{
        label: "Score",
        data: points.map((p) => ({ x: p.t, y: p.score })),
        stepped: "before",
        borderColor: "#0b57d0",
        backgroundColor: "#0b57d0",
        pointRadius: 4,
      }],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: true,
      scales: {
        x: { type: "linear", ticks: { callback: (v) => when(v).slice(5, 19), maxTicksLimit: 6 } },
        y: { min: 0, max: 100, title: { display: true, text: "score" } },
      },
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            title: (items) => when(items[0].parsed.x),
            label: (item) => {
              const p = points[item.dataIndex];
              return `${p.score.toFixed(1)} (${p.grade}) after ${p.cause}`;
            },
          },
        },
      },
    },
  });
  canvas.dataset.rendered = "true";
}

function barChart(id, labels, values, label) {
  const canvas = document.getElementById(id);
  if (!canvas || !window.Chart) return;
  new Chart(canvas, {
    type: "bar",
    data: { labels, datasets: [{ label, data: values, backgroundColor: "#0b57d0" }] },
    options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } } },
  });
  canvas.dataset.rendered = "true";
}

function analyticsCharts() {
  const funnel = json("funnel-data");
  if (funnel) barChart("funnel-chart", funnel.map((s) => s.step), funnel.map((s) => s.leads), "leads");
  const dist = json("dist-data");
  if (dist) barChart("dist-chart", dist.buckets.map((b) => `${b.from}–${b.to}`), dist.buckets.map((b) => b.count), "leads");
}

function modelCharts() {
  const charts = json("model-data");
  if (!charts || !window.Chart) return;
  document.querySelectorAll("section.model").forEach((section) => {
    const c = charts[section.dataset.version];
    const canvas = section.querySelector("canvas.calibration");
    if (!c || !canvas || !c.calibration.length) return;
    new Chart(canvas, {
      type: "line",
      data: {
        labels: c.calibration.map((b) => b.bin),
        datasets: [
          { label: "predicted", data: c.calibration.map((b) => b.mean_predicted), borderColor: "#6e7781" },
          { label: "observed", data: c.calibration.map((b) => b.observed_rate), borderColor: "#0b57d0" },
        ],
      },
      options: { animation: false, maintainAspectRatio: false, scales: { y: { min: 0, max: 1 } } },
    });
    canvas.dataset.rendered = "true";
  });
}

function timeSlider() {
  const box = document.getElementById("time-travel");
  if (!box) return;
  const slider = document.getElementById("as-of-slider");
  // Milliseconds, rounded up: the stored times have microseconds.
  const from = Date.parse(box.dataset.from) + 1;
  const to = Date.parse(box.dataset.to) + 1;
  const out = {
    at: box.querySelector("[data-testid=as-of-at]"),
    score: box.querySelector("[data-testid=as-of-score]"),
    grade: box.querySelector("[data-testid=as-of-grade]"),
  };
  let pending = null;
  async function show() {
    box.dataset.ready = "false";
    const t = from + (to - from) * (Number(slider.value) / Number(slider.max));
    const at = new Date(Math.round(t)).toISOString();
    slider.setAttribute("aria-valuetext", at);
    const url = `/console/leads/${encodeURIComponent(box.dataset.lead)}/as-of?at=${encodeURIComponent(at)}`;
    const reply = await fetch(url, { credentials: "same-origin" });
    const body = await reply.json();
    box.dataset.at = at;
    out.at.textContent = `${when(Date.parse(at))}: `;
    if (!reply.ok) {
      out.score.textContent = body.message || "unavailable";
      out.grade.textContent = "";
    } else if (body.score === null) {
      out.score.textContent = "not scored yet";
      out.grade.textContent = "";
    } else {
      out.score.textContent = body.score.score.toFixed(1);
      out.grade.textContent = ` ${body.score.grade} · ${body.status} · version ${body.version}`;
    }
    box.dataset.ready = "true";
  }
  slider.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(show, 120);
  });
  show();
}

document.addEventListener("DOMContentLoaded", () => {
  scoreChart();
  analyticsCharts();
  modelCharts();
  timeSlider();
});
