// An independent HBONE client on Node.js's built-in http2 module: mutual TLS 1.3 with ALPN h2
// to a peer's port 15008, then HTTP/2 CONNECT streams, all multiplexed on one connection.
//
// Usage: node hbone-client.js SPEC_JSON
//   SPEC = {connect: "ip:port", ca, cert, key (PEM paths), expectServerId: "spiffe://...",
//           requests: [{authority: "ip:port", message: "...", headers: {...}}]}
// Prints one JSON line per request, in order: {authority, status, echoed, error}, after a line
// describing the TLS session: {tls: {version, alpn, serverId, authorized}}. A failed TLS
// handshake prints {tls: {error}} and exits 0: the caller decides whether that was expected.
'use strict';
const fs = require('node:fs');
const http2 = require('node:http2');
const net = require('node:net');

const spec = JSON.parse(process.argv[2]);
const TIMEOUT_MS = 10000;

function hostPort(s) {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i).replace(/^\[|\]$/g, ''), Number(s.slice(i + 1))];
}

// SPIFFE identities are URI SANs; the IP-based hostname check Node would otherwise apply
// does not fit HBONE, where the peer is named by identity, not by address.
function uriSans(cert) {
  return (cert.subjectaltname || '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
}

const [host, port] = hostPort(spec.connect);
const url = `https://${net.isIPv6(host) ? `[${host}]` : host}:${port}`;
const session = http2.connect(url, {
  ca: fs.readFileSync(spec.ca),
  cert: fs.readFileSync(spec.cert),
  key: fs.readFileSync(spec.key),
  minVersion: 'TLSv1.3',
  maxVersion: 'TLSv1.3',
  ALPNProtocols: ['h2'],
  servername: '', // no SNI, as for any IP peer
  checkServerIdentity: (_host, cert) => {
    const ids = uriSans(cert);
    if (spec.expectServerId && !ids.includes(spec.expectServerId)) {
      return new Error(`server identity ${ids} is not ${spec.expectServerId}`);
    }
    return undefined;
  },
});

const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: 'timed out' }));
  process.exit(2);
}, TIMEOUT_MS);

let connected = false;
session.on('error', (e) => {
  if (!connected) {
    console.log(JSON.stringify({ tls: { error: String(e.code || e.message) } }));
    clearTimeout(timer);
    session.destroy();
    return;
  }
  console.error(`session error: ${e}`);
});

function exchange(r) {
  return new Promise((resolve) => {
    const headers = { ':method': 'CONNECT', ':authority': r.authority, ...(r.headers || {}) };
    const stream = session.request(headers);
    const result = { authority: r.authority, status: 0, echoed: '' };
    const msg = Buffer.from(r.message || '');
    const chunks = [];
    stream.on('response', (h) => {
      result.status = h[':status'];
      if (result.status === 200) {
        stream.write(msg);
      }
    });
    stream.on('data', (d) => {
      chunks.push(d);
      // Half-close once everything came back: the echo then half-closes too.
      if (Buffer.concat(chunks).length >= msg.length && !stream.writableEnded) {
        stream.end();
      }
    });
    stream.on('error', (e) => {
      result.error = String(e.code || e.message);
    });
    stream.on('close', () => {
      result.echoed = Buffer.concat(chunks).toString();
      resolve(result);
    });
  });
}

session.on('connect', async (s, socket) => {
  connected = true;
  const peer = socket.getPeerCertificate();
  console.log(
    JSON.stringify({
      tls: {
        version: socket.getProtocol(),
        alpn: socket.alpnProtocol,
        serverId: uriSans(peer).join(','),
        authorized: socket.authorized,
      },
    }),
  );
  // All requests at once: they share the one HTTP/2 connection.
  const results = await Promise.all(spec.requests.map(exchange));
  for (const r of results) {
    console.log(JSON.stringify(r));
  }
  clearTimeout(timer);
  session.close();
});
