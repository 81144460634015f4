// What the live page (index.html) and the review page (review.html) both use, written once.
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
// A cell's call: "neutrophil 97%"; an unknown cell has no percentage (it was the model's confidence in
// a class it then rejected: "unknown 100%" read as "100 % unknown"). As edge.catalogue.caption.
const call = (x, sep = " ") => x.label === "unknown" ? "unknown" : `${x.label}${sep}${(100 * x.confidence).toFixed(0)}%`;
