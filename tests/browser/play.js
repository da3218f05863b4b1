// Plays an nvrd HLS playlist with hls.js in Debian's Chromium and prints what the
// page saw as one JSON line. Run by tests/host/playback/test_hls_browser.py:
//
//   node play.js '{"base": "http://127.0.0.1:PORT", "playlist": "/api/v1/...m3u8?...",
//                  "mode": "vod" | "live", "seconds": 40,
//                  "authorization": "Basic ..."  (hls.js sends it: xhrSetup)
//                  | "login": {"username": ..., "password": ...}}'  (a session cookie)
//
// vod: play to the end at 16x (muted), until `ended` or `seconds` pass.
// live: play until the playhead is past the first discontinuity and what the first
// playlist held, or `seconds`.
//
// The page is served by this script at the daemon's own origin (page.route answers
// for one path the daemon does not have), so the page and the API are same-origin,
// as a web UI served by nvrd would be: no CORS and no --disable-web-security. Every
// other request goes to the real daemon over loopback.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const options = JSON.parse(process.argv[2]);
const PAGE = '/__nvrd_browser_test__/index.html';
const HLS_JS = '/__nvrd_browser_test__/hls.js';
const hlsJs = fs.readFileSync(path.join(__dirname, 'node_modules', 'hls.js', 'dist', 'hls.js'));
const hlsVersion = require('hls.js/package.json').version;

const html = `<!doctype html>
<meta charset="utf-8">
<video id="video" muted playsinline></video>
<script src="${HLS_JS}"></script>
<script>
window.report = { errors: [], events: [], fatal: null };
const video = document.getElementById('video');
for (const name of ['ended', 'stalled', 'waiting', 'error']) {
  video.addEventListener(name, () => report.events.push([name, video.currentTime]));
}
const authorization = ${JSON.stringify(options.authorization || null)};
const login = ${JSON.stringify(options.login || null)};
const hls = new Hls({
  debug: false,
  // A Bearer token or Basic goes in every request hls.js makes; a session cookie
  // goes by itself (same origin).
  xhrSetup: authorization ? (xhr) => xhr.setRequestHeader('Authorization', authorization) : undefined,
});
hls.on(Hls.Events.ERROR, (_, data) => {
  const entry = { type: data.type, details: data.details, fatal: data.fatal,
                  url: data.frag ? data.frag.url : (data.url || null),
                  reason: data.reason || (data.error ? String(data.error) : null) };
  report.errors.push(entry);
  if (data.fatal) report.fatal = entry;
});
hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
  report.levels = data.levels.map((l) => ({ codecs: l.codecSet || null, videoCodec: l.videoCodec || null,
                                           audioCodec: l.audioCodec || null, width: l.width, height: l.height }));
});
report.loads = [];  // [fragments, totalduration] of every playlist load
hls.on(Hls.Events.LEVEL_LOADED, (_, data) => {
  report.playlist = { live: data.details.live, totalduration: data.details.totalduration,
                      fragments: data.details.fragments.length };
  report.loads.push([data.details.fragments.length, data.details.totalduration]);
});
hls.on(Hls.Events.BUFFER_CODECS, (_, data) => {
  report.bufferCodecs = Object.fromEntries(Object.entries(data).map(([k, v]) => [k, v.codec || v.container]));
});
(async () => {
  if (login) {
    const response = await fetch('/api/v1/auth/session', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(login) });
    report.login = response.status;
  }
  hls.loadSource(${JSON.stringify(options.playlist)});
  hls.attachMedia(video);
})();
video.addEventListener('loadedmetadata', () => {
  ${options.mode === 'vod' ? 'video.playbackRate = 16;' : ''}
  video.play().catch((e) => report.errors.push({ type: 'play', details: String(e), fatal: false }));
});
window.snapshot = () => {
  const q = video.getVideoPlaybackQuality();
  const details = hls.levels[0] && hls.levels[0].details;
  // Where on the media timeline each discontinuity (a new run) begins.
  report.discontinuities = details
    ? details.fragments.filter((f, i, all) => i > 0 && f.cc !== all[i - 1].cc).map((f) => f.start) : [];
  return { ...report, ended: video.ended, currentTime: video.currentTime, duration: video.duration,
           paused: video.paused, readyState: video.readyState,
           videoError: video.error ? video.error.message || String(video.error.code) : null,
           totalVideoFrames: q.totalVideoFrames, droppedVideoFrames: q.droppedVideoFrames,
           buffered: Array.from({ length: video.buffered.length },
                                (_, i) => [video.buffered.start(i), video.buffered.end(i)]) };
};
</script>`;

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    // As root Chromium needs --no-sandbox; the others keep it off the network,
    // which is closed here (machines/python.md).
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync',
           '--autoplay-policy=no-user-gesture-required'],
  });
  try {
    const page = await browser.newPage();
    const console_ = [];
    page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));
    await page.route(options.base + PAGE, (route) =>
      route.fulfill({ status: 200, contentType: 'text/html', body: html }));
    await page.route(options.base + HLS_JS, (route) =>
      route.fulfill({ status: 200, contentType: 'text/javascript', body: hlsJs }));
    await page.goto(options.base + PAGE);
    const deadline = Date.now() + options.seconds * 1000;
    let first = null;
    let snap;
    for (;;) {
      snap = await page.evaluate(() => window.snapshot());
      if (first === null && snap.readyState >= 2) first = { at: Date.now(), currentTime: snap.currentTime };
      if (snap.fatal || Date.now() > deadline) break;
      if (options.mode === 'vod' && snap.ended) break;
      // live: done once the playhead is a second past the first discontinuity (the
      // camera reconnected) and past all that the first non-empty playlist held.
      const firstLoad = snap.loads.find(([fragments]) => fragments > 0);
      if (options.mode === 'live' && firstLoad && snap.discontinuities.length
          && snap.currentTime > Math.max(firstLoad[1], snap.discontinuities[0]) + 1) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    snap.firstPlayable = first;
    snap.console = console_.slice(-50);
    snap.chromium = browser.version();
    snap.hlsJs = hlsVersion;
    process.stdout.write(JSON.stringify(snap) + '\n');
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(2); });
