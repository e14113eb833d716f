// GenGuard reviewer page, the Jobs panel: this key's async jobs (GET /v1/jobs) and, for the one picked, its
// results (GET /v1/jobs/{id}), item by item as /v1/detect answers them. Uses app.js's el() and headers().
"use strict";

const jobsState = {selected: null};

function jobsEl(id) { return document.getElementById(id); }

async function jobsFetch(path) {
  const response = await fetch(path, {headers: headers(), cache: "no-store"});
  if (!response.ok) {
    const error = await errorOf(response);
    jobsEl("jobs-status").textContent = `${error.code}: ${error.message}`;
    return null;
  }
  return response.json();
}

async function loadJobs() {
  const filter = jobsEl("jobs-filter").value;
  const body = await jobsFetch("/v1/jobs?limit=50" + (filter ? "&status=" + encodeURIComponent(filter) : ""));
  if (!body) return;
  const rows = jobsEl("job-rows");
  rows.replaceChildren(...body.data.map((job) => el("tr", {"data-job": job.id, tabindex: "0",
      class: job.id === jobsState.selected ? "selected" : null},
    el("td", {class: "mono", text: job.id.slice(0, 12)}),
    el("td", {class: "status-" + job.status, text: job.status}),
    el("td", {text: `${job.progress.done}/${job.progress.total}`}),
    el("td", {text: (job.created_at || "").replace("T", " ").replace(/\.\d+Z$/, "Z")}),
    el("td", {text: job.webhook.status === "none" ? "—" : job.webhook.status}))));
  jobsEl("jobs-status").textContent = body.data.length ? `${body.data.length} job(s)` +
    (body.next_cursor ? " (the 50 newest)" : "") : "No jobs for this key.";
}

async function showJob(id) {
  jobsState.selected = id;
  for (const row of jobsEl("job-rows").querySelectorAll("tr")) row.classList.toggle("selected", row.dataset.job === id);
  const job = await jobsFetch("/v1/jobs/" + encodeURIComponent(id));
  if (!job) return;
  jobsEl("job-title").textContent = `Job ${job.id}: ${job.status}, ${job.progress.done}/${job.progress.total}` +
    (job.error ? ` (${job.error})` : "");
  jobsEl("job-results").replaceChildren(...(job.data || []).map((doc) => el("tr", {"data-index": String(doc.index)},
    el("td", {text: doc.name}),
    el("td", {text: doc.status === "SUCCESS" ? (doc.verdict || "—") : "FAILURE"}),
    el("td", {}, num(doc.is_ai_generated)),
    el("td", {text: doc.source || (doc.error ? doc.error.reason : "—")}),
    el("td", {text: doc.nsfw ? doc.nsfw.level : "—"}))));
  jobsEl("job-detail").hidden = false;
}

function initJobs() {
  jobsEl("jobs-refresh").addEventListener("click", loadJobs);
  jobsEl("jobs-filter").addEventListener("input", loadJobs);
  jobsEl("jobs").addEventListener("toggle", () => { if (jobsEl("jobs").open) loadJobs(); });
  jobsEl("job-rows").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-job]");
    if (row) showJob(row.dataset.job);
  });
  jobsEl("job-rows").addEventListener("keydown", (e) => {
    const row = e.target.closest("tr[data-job]");
    if (row && e.key === "Enter") showJob(row.dataset.job);
  });
}

document.addEventListener("DOMContentLoaded", initJobs);
