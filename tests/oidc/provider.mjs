// A real OpenID provider for the tests: npm's oidc-provider (a certified implementation) on
// loopback, configured from a JSON file written by tests/oidc/fixture.py.
//
// The test controls it through a second port (loopback, JSON):
//   POST /users  {"alice": {"email": ..., "email_verified": true, "groups": [...]}, ...}
//   POST /tamper {"aud": "other"} | {"exp": -3600} | {"rogue": true} | {}
// Tampering re-signs the ID token of the next token answers, as a broken or malicious
// provider would (wrong audience, expired, signed by a key it does not publish): nothing real
// produces such tokens on demand, and the verification that must refuse them is ours.
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
let users = cfg.users;
let tamper = {};

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients,
  jwks: { keys: cfg.keys },
  cookies: { keys: ['trioscale-test-cookie-key'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'picture'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => false },
  async findAccount(ctx, id) {
    const u = users[id];
    if (!u) return undefined;
    return { accountId: id, async claims() { return { sub: id, preferred_username: id, ...u }; } };
  },
  // First-party test clients: no consent screen.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

const signing = cfg.keys.find((k) => k.alg === 'RS256' || k.kty === 'RSA');
const rogue = cfg.rogue_key;

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path !== '/token' || ctx.method !== 'POST' || !tamper || Object.keys(tamper).length === 0) return;
  if (!ctx.body || !ctx.body.id_token) return;
  const claims = jose.decodeJwt(ctx.body.id_token);
  if (tamper.aud) claims.aud = tamper.aud;
  if (tamper.exp) { claims.exp = Math.floor(Date.now() / 1000) + tamper.exp; claims.iat = claims.exp - 600; }
  const jwk = tamper.rogue ? rogue : signing;
  const key = await jose.importJWK(jwk, 'RS256');
  ctx.body.id_token = await new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: jwk.kid }).sign(key);
});

provider.listen(cfg.port, '127.0.0.1', () => {
  http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      try {
        const doc = body ? JSON.parse(body) : {};
        if (req.url === '/users') users = doc;
        else if (req.url === '/tamper') tamper = doc;
        else { res.writeHead(404); res.end(); return; }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      } catch (e) {
        res.writeHead(400); res.end(String(e));
      }
    });
  }).listen(cfg.control_port, '127.0.0.1', () => console.log('ready'));
});
