// An independent HBONE server on Node.js's built-in http2 module, standing in for a peer
// ztunnel: TLS 1.3 only, ALPN h2, client certificate required and chained to the mesh CA.
// Each CONNECT is answered 200 once a TCP connection to its :authority is open, then piped.
//
// Usage: node hbone-server.js SPEC_JSON
//   SPEC = {listen: "ip:port", ca, cert, key (PEM paths)}
// Prints {listening: "ip:port"} when ready, then one JSON line per CONNECT with what it saw:
// {authority, headers, clientId, tls: {version, alpn}}.
'use strict';
const fs = require('node:fs');
const http2 = require('node:http2');
const net = require('node:net');

const spec = JSON.parse(process.argv[2]);

function hostPort(s) {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i).replace(/^\[|\]$/g, ''), Number(s.slice(i + 1))];
}

const server = http2.createSecureServer({
  ca: fs.readFileSync(spec.ca),
  cert: fs.readFileSync(spec.cert),
  key: fs.readFileSync(spec.key),
  minVersion: 'TLSv1.3',
  maxVersion: 'TLSv1.3',
  ALPNProtocols: ['h2'],
  allowHTTP1: false,
  requestCert: true,
  rejectUnauthorized: true,
});

server.on('stream', (stream, headers) => {
  const socket = stream.session.socket;
  const cert = socket.getPeerCertificate();
  const clientId = (cert.subjectaltname || '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4))
    .join(',');
  const seen = {};
  for (const [k, v] of Object.entries(headers)) {
    if (!k.startsWith(':')) seen[k] = String(v);
  }
  console.log(
    JSON.stringify({
      method: headers[':method'],
      authority: headers[':authority'],
      headers: seen,
      clientId,
      tls: { version: socket.getProtocol(), alpn: socket.alpnProtocol },
    }),
  );
  if (headers[':method'] !== 'CONNECT') {
    stream.respond({ ':status': 405 }, { endStream: true });
    return;
  }
  const [host, port] = hostPort(headers[':authority'] || '');
  const upstream = net.connect({ host, port });
  upstream.on('connect', () => {
    stream.respond({ ':status': 200 });
    stream.pipe(upstream);
    upstream.pipe(stream);
  });
  upstream.on('error', () => {
    if (!stream.headersSent) {
      stream.respond({ ':status': 503 }, { endStream: true });
    } else {
      stream.close(http2.constants.NGHTTP2_CONNECT_ERROR);
    }
  });
  stream.on('error', () => upstream.destroy());
});

server.on('tlsClientError', (e) => console.error(`tls client error: ${e.code || e.message}`));

const [host, port] = hostPort(spec.listen);
server.listen(port, host, () => {
  console.log(JSON.stringify({ listening: spec.listen }));
});
