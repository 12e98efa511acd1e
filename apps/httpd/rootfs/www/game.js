// Ember Catch: a small canvas game served by Kiln's httpd.
"use strict";
const canvas = document.getElementById("game");
const ctx = canvas.getContext("2d");
const status = document.getElementById("status");
let state;

function reset() {
  state = { x: canvas.width / 2, embers: [], score: 0, lives: 3, tick: 0, keys: {}, over: false };
}

function spawn() {
  state.embers.push({ x: 20 + Math.random() * (canvas.width - 40), y: -10,
                      v: 1.5 + Math.random() * (1 + state.score / 20) });
}

function step() {
  const s = state;
  if (!s.over) {
    if (s.keys.left) s.x -= 6;
    if (s.keys.right) s.x += 6;
    s.x = Math.max(30, Math.min(canvas.width - 30, s.x));
    if (s.tick++ % Math.max(18, 50 - s.score) === 0) spawn();
    for (const e of s.embers) e.y += e.v;
    const caught = s.embers.filter(e => e.y > canvas.height - 30 && e.y < canvas.height - 10 && Math.abs(e.x - s.x) < 32);
    s.score += caught.length;
    const missed = s.embers.filter(e => e.y > canvas.height);
    s.lives -= missed.length;
    s.embers = s.embers.filter(e => !caught.includes(e) && !missed.includes(e));
    if (s.lives <= 0) { s.lives = 0; s.over = true; }
  }
  draw();
  requestAnimationFrame(step);
}

function draw() {
  const s = state;
  ctx.fillStyle = "#0f0a08";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (const e of s.embers) {
    const g = ctx.createRadialGradient(e.x, e.y, 1, e.x, e.y, 9);
    g.addColorStop(0, "#fff3b0");
    g.addColorStop(1, "rgba(255,90,20,0)");
    ctx.fillStyle = g;
    ctx.beginPath(); ctx.arc(e.x, e.y, 9, 0, Math.PI * 2); ctx.fill();
  }
  ctx.fillStyle = "#ff8c42";
  ctx.fillRect(s.x - 30, canvas.height - 18, 60, 10);
  if (s.over) {
    ctx.fillStyle = "#f6e7d8";
    ctx.font = "bold 28px system-ui";
    ctx.textAlign = "center";
    ctx.fillText("The fire went out", canvas.width / 2, canvas.height / 2);
  }
  status.textContent = `Score: ${s.score} · Lives: ${s.lives}`;
}

addEventListener("keydown", e => {
  if (e.key === "ArrowLeft" || e.key === "a") state.keys.left = true;
  if (e.key === "ArrowRight" || e.key === "d") state.keys.right = true;
});
addEventListener("keyup", e => {
  if (e.key === "ArrowLeft" || e.key === "a") state.keys.left = false;
  if (e.key === "ArrowRight" || e.key === "d") state.keys.right = false;
});
canvas.addEventListener("mousemove", e => {
  const r = canvas.getBoundingClientRect();
  state.x = (e.clientX - r.left) * canvas.width / r.width;
});
document.getElementById("restart").addEventListener("click", reset);
reset();
document.body.dataset.ready = "yes";
// For checks from a headless browser: the stylesheet and the logo arrived.
document.body.dataset.background = getComputedStyle(document.body).backgroundColor;
addEventListener("load", () => {
  document.body.dataset.logo = String(document.querySelector("header img").naturalWidth);
});
requestAnimationFrame(step);
