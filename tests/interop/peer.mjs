// Fedify 2.3.6 as an independent ActivityPub peer, driven by tests/test_interop_fedify.py.
// Every mode talks only to 127.0.0.1 and prints one JSON line on stdout (serve prints its port first).
//   node peer.mjs actor <actor-url>            what Fedify reads from our actor document
//   node peer.mjs serve                         an inbox that answers verifyRequest's result
//   node peer.mjs sign <spec> <url> <body>      a POST signed by Fedify (draft-cavage-http-signatures-12 | rfc9421)
//   node peer.mjs verify-proof                  verifyProof of each proof of the JSON document on stdin
import http from "node:http";
import { getDocumentLoader, signRequest, verifyProof, verifyRequest } from "@fedify/fedify";
import { DataIntegrityProof, lookupObject } from "@fedify/vocab";
import { exportMultibaseKey, exportSpki } from "@fedify/vocab-runtime";

// Our node listens on loopback: Fedify refuses private addresses unless told otherwise.
const documentLoader = getDocumentLoader({ allowPrivateAddress: true });
const out = (value) => process.stdout.write(JSON.stringify(value) + "\n");

async function actor(url) {
  const obj = await lookupObject(url, { documentLoader });
  if (obj == null) return out({ found: false });
  const key = await obj.getPublicKey({ documentLoader });
  const methods = [];
  for await (const m of obj.getAssertionMethods({ documentLoader })) {
    methods.push({
      id: m.id?.href ?? null,
      controller: m.controllerId?.href ?? null,
      algorithm: m.publicKey?.algorithm?.name ?? null,
      multibase: m.publicKey ? await exportMultibaseKey(m.publicKey) : null,
    });
  }
  out({
    found: true,
    type: obj.constructor.name,
    id: obj.id?.href ?? null,
    inbox: obj.inboxId?.href ?? null,
    manuallyApprovesFollowers: obj.manuallyApprovesFollowers ?? null,
    publicKey: key && {
      id: key.id?.href ?? null,
      owner: key.ownerId?.href ?? null,
      algorithm: key.publicKey?.algorithm?.name ?? null,
      pem: key.publicKey ? await exportSpki(key.publicKey) : null,
    },
    assertionMethods: methods,
  });
}

function serve() {
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const headers = new Headers();
    for (const [name, value] of Object.entries(req.headers)) {
      headers.set(name, Array.isArray(value) ? value.join(", ") : value);
    }
    const request = new Request(`http://${req.headers.host}${req.url}`, {
      method: req.method, headers, body: ["GET", "HEAD"].includes(req.method) ? undefined : body,
    });
    let result;
    try {
      const key = await verifyRequest(request, { documentLoader, contextLoader: documentLoader });
      result = key == null ? { verified: false }
        : { verified: true, keyId: key.id?.href ?? null, owner: key.ownerId?.href ?? null };
    } catch (error) {
      result = { verified: false, error: String(error) };
    }
    res.writeHead(result.verified ? 202 : 401, { "content-type": "application/json" });
    res.end(JSON.stringify(result));
  });
  server.listen(0, "127.0.0.1", () => out({ port: server.address().port }));
  process.stdin.on("end", () => server.close(() => process.exit(0)));  // our parent closed our stdin
  process.stdin.resume();
}

async function sign(spec, url, body) {
  const { privateKey, publicKey } = await crypto.subtle.generateKey(
    { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
    true, ["sign", "verify"]);
  const keyId = new URL("/actors/fedify#main-key", url);
  const request = new Request(url, {
    method: "POST", body,
    headers: { "content-type": "application/activity+json", accept: "application/activity+json" },
  });
  const signed = await signRequest(request, privateKey, keyId, { spec });
  out({ keyId: keyId.href, publicKeyPem: await exportSpki(publicKey), headers: [...signed.headers] });
}

// Fedify's verifyObject needs a vocab class, and a Verdict is no AS2 Object subtype: verify each proof with
// verifyProof (the core of verifyObject), and report the key's controller for the caller to match the issuer.
async function verifyProofsFromStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const doc = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const options = { documentLoader, contextLoader: documentLoader };
  const proofs = [];
  for (const raw of [doc.proof ?? []].flat()) {
    const proof = await DataIntegrityProof.fromJsonLd({ "@context": doc["@context"], ...raw }, options);
    const key = await verifyProof(doc, proof, options);
    proofs.push({ verificationMethod: proof.verificationMethodId?.href ?? null, cryptosuite: proof.cryptosuite,
                  verifiedBy: key?.id?.href ?? null, controller: key?.controllerId?.href ?? null });
  }
  out({ verified: proofs.length > 0 && proofs.every((p) => p.verifiedBy != null), proofs });
}

const [mode, ...args] = process.argv.slice(2);
const modes = { actor, serve, sign, "verify-proof": verifyProofsFromStdin };
if (!(mode in modes)) {
  console.error(`usage: node peer.mjs ${Object.keys(modes).join("|")} ...`);
  process.exit(2);
}
await modes[mode](...args);
