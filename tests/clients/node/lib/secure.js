'use strict';
// A limitsd that serves TLS and asks for tokens, for the admin and TLS
// tests: certificates made here (node-forge signs them; Node's crypto makes
// the RSA keys), a config with a write, a read and a data-plane token and a
// client certificate mapped to the write scope.

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const forge = require('node-forge');

const { grpc, startLimitsd } = require('./limitsd');

/** ops may change (write), auditor may read, gateway may only use the data plane. */
const WRITE_TOKEN = 'w-5d0c8e1f7a2b4c6e';
const READ_TOKEN = 'r-9a8b7c6d5e4f3a2b';
const DATA_TOKEN = 'd-1f2e3d4c5b6a7988';
/** The client certificate's name, which `security.clients` maps to write. */
const CLIENT_CN = 'ops.example.com';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');

function keyPair() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' });
  const key = forge.pki.privateKeyFromPem(pem);
  return { pem, key, publicKey: forge.pki.setRsaPublicKey(key.n, key.e) };
}

/** A certificate for `cn`, signed by `issuer` ({ cert, key }) or by itself. */
function certificate(cn, publicKey, extensions, issuer, selfKey) {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  // Positive, 16 bytes.
  cert.serialNumber = `01${crypto.randomBytes(15).toString('hex')}`;
  cert.validity.notBefore = new Date(Date.now() - 5 * 60_000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  cert.setSubject([{ name: 'commonName', value: cn }]);
  cert.setIssuer(issuer ? issuer.cert.subject.attributes : [{ name: 'commonName', value: cn }]);
  cert.setExtensions(extensions);
  cert.sign(issuer ? issuer.key : selfKey, forge.md.sha256.create());
  return cert;
}

/** A CA in `dir`: `caPath` is its certificate; `leaf(...)` writes certificates it signs. */
function makeCa(dir, cn = 'limitsd test CA') {
  fs.mkdirSync(dir, { recursive: true });
  const { key, publicKey } = keyPair();
  const cert = certificate(cn, publicKey, [
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ], null, key);
  const slug = cn.replace(/ /g, '-');
  const caPath = path.join(dir, `${slug}.crt`);
  fs.writeFileSync(caPath, forge.pki.certificateToPem(cert));
  return {
    caPath,
    /** A certificate for `names` (DNS names or IPv4 addresses): { cert, key } file paths. */
    leaf(leafCn, names, { server = true } = {}) {
      const pair = keyPair();
      const altNames = names.map((n) => (/^\d+\.\d+\.\d+\.\d+$/.test(n) ? { type: 7, ip: n } : { type: 2, value: n }));
      const leafCert = certificate(leafCn, pair.publicKey, [
        { name: 'basicConstraints', cA: false, critical: true },
        { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
        { name: 'extKeyUsage', serverAuth: server, clientAuth: !server },
        { name: 'subjectAltName', altNames },
        { name: 'authorityKeyIdentifier', keyIdentifier: cert.generateSubjectKeyIdentifier().getBytes() },
      ], { cert, key });
      const files = { cert: path.join(dir, `${slug}-${leafCn}.crt`), key: path.join(dir, `${slug}-${leafCn}.key`) };
      fs.writeFileSync(files.cert, forge.pki.certificateToPem(leafCert));
      fs.writeFileSync(files.key, pair.pem);
      return files;
    },
  };
}

/**
 * Starts limitsd with TLS (a certificate for localhost and 127.0.0.1) and
 * the tokens; `body` is more config under `limits:` (indented two spaces).
 * Resolves to { d, target, caPath, client: { cert, key }, dir, stop() }.
 */
async function startSecure(body = '', { dataPlaneAuth = false } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'limitsd-pki-'));
  const ca = makeCa(dir);
  const server = ca.leaf('limitsd', ['localhost', '127.0.0.1']);
  const client = ca.leaf(CLIENT_CN, [CLIENT_CN], { server: false });
  const config = `limits:
  server:
    tls:
      cert_file: ${server.cert}
      key_file: ${server.key}
      client_ca_file: ${ca.caPath}
      client_auth: optional
  security:
    data_plane_auth: ${dataPlaneAuth}
    tokens:
      - { name: ops, sha256: "${sha256(WRITE_TOKEN)}", scope: write }
      - { name: auditor, sha256: "${sha256(READ_TOKEN)}", scope: read }
      - { name: gateway, sha256: "${sha256(DATA_TOKEN)}", scope: data }
    clients:
      - { subject: ${CLIENT_CN}, scope: write }
  storage: { backend: memory }
${body}`;
  // The readiness check presents the client certificate: a credential
  // limitsd accepts whether or not the data plane asks for one.
  const credentials = grpc.credentials.createSsl(fs.readFileSync(ca.caPath),
    fs.readFileSync(client.key), fs.readFileSync(client.cert));
  let d;
  try {
    d = await startLimitsd(config, { credentials });
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    d,
    target: d.grpcAddr,
    caPath: ca.caPath,
    client,
    dir,
    makeCa,
    async stop() {
      await d.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

module.exports = {
  startSecure, makeCa, WRITE_TOKEN, READ_TOKEN, DATA_TOKEN, CLIENT_CN,
};
