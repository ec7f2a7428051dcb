// Minimal OpenID Connect provider standing in for Dex (dexidp/dex) in local dev.
// It reads Dex's own config file and serves the same endpoints under the issuer
// path (/dex/auth, /dex/token, /dex/keys, /dex/userinfo, ...), using panva's
// oidc-provider for the protocol work. See README.md for what is (not) covered.
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';
import bcrypt from 'bcryptjs';
import YAML from 'yaml';
import Provider, { errors } from 'oidc-provider';

const log = (level, msg) => (level === 'error' ? console.error : console.log)(`${new Date().toISOString()} ${level} ${msg}`);

// ---- command line and config ------------------------------------------------
const { values: args } = parseArgs({ options: {
  config: { type: 'string' }, 'data-dir': { type: 'string' },
  port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' },
} });
if (!args.config || !args['data-dir']) {
  console.error('usage: node server.mjs --config FILE --data-dir DIR [--port PORT] [--host 127.0.0.1]');
  process.exit(2);
}

// Dex expands $VAR / ${VAR} from the environment. Password hashes are never
// expanded: bcrypt strings like "$2a$10$Sihm..." would otherwise be mangled.
const expandEnv = (v, key) => {
  if (typeof v === 'string' && key !== 'hash') {
    return v.replace(/\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)/g, (_, a, b) => process.env[a ?? b] ?? '');
  }
  if (Array.isArray(v)) return v.map((x) => expandEnv(x));
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, expandEnv(x, k)]));
  return v;
};
const config = expandEnv(YAML.parse(fs.readFileSync(args.config, 'utf8')) ?? {});

const KNOWN = ['issuer', 'storage', 'web', 'telemetry', 'grpc', 'expiry', 'logger', 'oauth2', 'staticClients',
  'enablePasswordDB', 'staticPasswords', 'connectors', 'frontend'];
for (const key of Object.keys(config)) if (!KNOWN.includes(key)) log('warn', `ignoring unknown config key "${key}"`);
if (config.connectors?.length) log('warn', 'connectors are not supported by this server; only the local password DB is used');

const issuer = process.env.DEX_ISSUER || config.issuer;
if (!issuer) { log('error', 'config has no issuer (and DEX_ISSUER is not set)'); process.exit(2); }
const issuerUrl = new URL(issuer);
const prefix = issuerUrl.pathname.replace(/\/$/, ''); // e.g. "/dex"; endpoints live under it
const port = Number(args.port ?? (String(config.web?.http ?? '').split(':').pop() || 5556));

// Dex's subject is base64url(protobuf{1: userID, 2: connectorID}), unpadded.
const protoString = (field, s) => {
  const bytes = Buffer.from(s, 'utf8');
  const len = []; // varint-encoded length
  for (let n = bytes.length; ; n >>>= 7) { if (n < 0x80) { len.push(n); break; } len.push((n & 0x7f) | 0x80); }
  return Buffer.concat([Buffer.from([(field << 3) | 2, ...len]), bytes]);
};
const dexSubject = (userID, connector = 'local') => Buffer.concat([protoString(1, userID), protoString(2, connector)]).toString('base64url');

// Like Dex, accept the bcrypt hash either as-is or base64-encoded.
const bcryptHash = (h = '') => (String(h).startsWith('$2') ? String(h) : Buffer.from(String(h), 'base64').toString());
const users = (config.enablePasswordDB ? config.staticPasswords ?? [] : []).map((p) => ({
  sub: dexSubject(String(p.userID)), email: String(p.email).toLowerCase(), username: p.username, hash: bcryptHash(p.hash),
}));
for (const u of users) if (!/^\$2[abxy]\$\d\d\$.{53}$/.test(u.hash)) log('warn', `staticPasswords: ${u.email} has no valid bcrypt hash`);
if (!config.enablePasswordDB) log('warn', 'enablePasswordDB is false: nobody can log in');

// Hash of a random string nobody knows: unknown users cost one bcrypt round too,
// so response timing does not tell which emails exist.
const DUMMY_HASH = '$2b$10$wAPRL1HR/dtJrKS0./GkVupaDnyXujGnl/nNkBrxCtCwqT.3D0eba';
async function checkPassword(login, password) {
  const l = String(login ?? '').trim().toLowerCase();
  const user = users.find((u) => u.email === l || u.username?.toLowerCase() === l);
  // bcryptjs knows $2a$/$2b$; $2y$ (PHP, htpasswd) is the same algorithm under another name.
  const hash = (user?.hash ?? DUMMY_HASH).replace(/^\$2y\$/, '$2a$');
  const ok = await bcrypt.compare(String(password ?? ''), hash).catch(() => false);
  return ok && user ? user : undefined;
}

// ---- persistent state in --data-dir ---------------------------------------
const dataDir = path.resolve(args['data-dir']);
fs.mkdirSync(path.join(dataDir, 'store'), { recursive: true, mode: 0o700 });

function writeAtomicSync(file, text) {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}
// Secrets are created on first boot and reused so `kid` and cookies survive restarts.
function loadOrCreate(name, create) {
  const file = path.join(dataDir, name);
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const value = create();
  writeAtomicSync(file, JSON.stringify(value, null, 2));
  log('info', `created ${file}`);
  return value;
}
const signingKey = loadOrCreate('signing-key.json', () => ({
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: randomBytes(16).toString('hex'), alg: 'RS256', use: 'sig',
}));
const cookieKeys = loadOrCreate('cookie-keys.json', () => [randomBytes(32).toString('base64url')]);

// File-backed adapter: every record lives in memory and in store/<Model>/<id>.json.
// Writes are serialised through one promise chain and are tmp+rename atomic.
const records = new Map(); // `${model}:${id}` -> { model, id, payload, expiresAt }
const fileFor = (model, id) => path.join(dataDir, 'store', model, `${Buffer.from(id).toString('base64url')}.json`);
let writeQueue = Promise.resolve();
const enqueue = (fn) => (writeQueue = writeQueue.then(fn).catch((e) => log('error', `store: ${e.message}`)));
const expired = (r) => r.expiresAt && r.expiresAt <= Date.now();

function persist(r) {
  return enqueue(async () => {
    const file = fileFor(r.model, r.id);
    await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await fsp.writeFile(`${file}.tmp`, JSON.stringify(r), { mode: 0o600 });
    await fsp.rename(`${file}.tmp`, file);
  });
}
function remove(key) {
  const r = records.get(key);
  if (!r) return Promise.resolve();
  records.delete(key);
  return enqueue(() => fsp.rm(fileFor(r.model, r.id), { force: true }));
}
// Load what earlier runs left behind, dropping expired records.
for (const model of fs.readdirSync(path.join(dataDir, 'store'))) {
  for (const f of fs.readdirSync(path.join(dataDir, 'store', model))) {
    const file = path.join(dataDir, 'store', model, f);
    try {
      if (!f.endsWith('.json')) { fs.rmSync(file); continue; } // leftover tmp file from a crash
      const r = JSON.parse(fs.readFileSync(file, 'utf8'));
      if (expired(r)) fs.rmSync(file); else records.set(`${model}:${r.id}`, r);
    } catch (e) { log('warn', `store: skipping ${file}: ${e.message}`); }
  }
}
setInterval(() => { for (const [k, r] of records) if (expired(r)) remove(k); }, 600_000).unref();

class FileAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    const r = { model: this.model, id, payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined };
    records.set(this.key(id), r);
    await persist(r);
  }
  async find(id) {
    const r = records.get(this.key(id));
    return r && !expired(r) ? r.payload : undefined;
  }
  async findBy(field, value) {
    for (const r of records.values()) if (r.model === this.model && r.payload[field] === value && !expired(r)) return r.payload;
    return undefined;
  }
  findByUid(uid) { return this.findBy('uid', uid); }
  findByUserCode(userCode) { return this.findBy('userCode', userCode); }
  async consume(id) {
    const r = records.get(this.key(id));
    if (r) { r.payload.consumed = Math.floor(Date.now() / 1000); await persist(r); }
  }
  async destroy(id) { await remove(this.key(id)); }
  async revokeByGrantId(grantId) {
    await Promise.all([...records].filter(([, r]) => r.payload.grantId === grantId).map(([k]) => remove(k)));
  }
}

// ---- the OIDC provider -----------------------------------------------------
const passwordGrantEnabled = config.enablePasswordDB && config.oauth2?.passwordConnector === 'local';
const allowedOrigins = config.web?.allowedOrigins ?? [];
const clients = (config.staticClients ?? []).map((c) => ({
  client_id: c.id ?? process.env[c.idEnv],
  client_name: c.name,
  ...(c.public ? { token_endpoint_auth_method: 'none' } : { client_secret: c.secret ?? process.env[c.secretEnv] }),
  redirect_uris: c.redirectURIs ?? [],
  post_logout_redirect_uris: c.redirectURIs ?? [],
  response_types: ['code'],
  grant_types: ['authorization_code', 'refresh_token', ...(passwordGrantEnabled ? ['password'] : [])],
}));

const findAccount = (ctx, sub) => {
  const u = users.find((x) => x.sub === sub);
  return u && { accountId: sub, claims: () => ({ sub, email: u.email, email_verified: true, name: u.username }) };
};
// The claims Dex adds to its ID and access tokens for the scopes granted (server/oauth2.go,
// newIDToken): email and email_verified for `email`, name (the username) for `profile`.
const scopeClaims = (sub, scope) => {
  const u = users.find((x) => x.sub === sub);
  const scopes = new Set(scope?.split(' '));
  return {
    ...(u && scopes.has('email') ? { email: u.email, email_verified: true } : undefined),
    ...(u && scopes.has('profile') && u.username ? { name: u.username } : undefined),
  };
};
const html = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const provider = new Provider(issuer, {
  adapter: FileAdapter,
  clients,
  findAccount,
  jwks: { keys: [signingKey] },
  cookies: { keys: cookieKeys },
  // Same endpoint paths as Dex, relative to the issuer.
  routes: { authorization: '/auth', token: '/token', jwks: '/keys', userinfo: '/userinfo',
    introspection: '/token/introspect', revocation: '/token/revoke', end_session: '/logout' },
  responseTypes: ['code'],
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  conformIdTokenClaims: false, // put scope claims in the ID token, like Dex does
  enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
  features: {
    devInteractions: { enabled: false }, // we render our own login form below
    introspection: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
    revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
  },
  interactions: { url: (ctx, interaction) => `${prefix}/interaction/${interaction.uid}` },
  pkce: { required: () => false }, // Dex makes PKCE optional; S256 is honoured when sent
  // Dex never shows a consent screen for static clients: grant whatever is asked.
  async loadExistingGrant(ctx) {
    const { client, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    const grant = (grantId && await ctx.oidc.provider.Grant.find(grantId))
      || new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
    grant.addOIDCClaims([...ctx.oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },
  // Kept with each access token's record and signed into its JWT (see AccessToken below). Dex
  // also carries the authorization request's nonce into the access token, refreshed ones too.
  extraTokenClaims: async (ctx, token) => {
    if (token.kind !== 'AccessToken') return undefined;
    const nonce = ctx?.oidc.entities.AuthorizationCode?.nonce ?? ctx?.oidc.entities.RefreshToken?.nonce;
    return { ...(nonce ? { nonce } : undefined), ...scopeClaims(token.accountId, token.scope) };
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false, // Dex tokens do not die with the browser session
  clientBasedCORS: (ctx, origin, client) => allowedOrigins.includes('*') || allowedOrigins.includes(origin)
    || client.redirectUris.some((u) => URL.parse(u)?.origin === origin),
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>Error</title><h1>${html(out.error)}</h1><p>${html(out.error_description ?? '')}</p>`;
  },
  ttl: { AccessToken: 3600, IdToken: 3600, RefreshToken: 86400 * 14, AuthorizationCode: 600,
    Session: 86400 * 14, Grant: 86400 * 14, Interaction: 3600 },
});
// URLs are built from the issuer (as Dex does), whatever Host the request used.
provider.proxy = true;

// Dex lets public clients redirect to any http://localhost port besides the listed URIs.
const { redirectUriAllowed } = provider.Client.prototype;
provider.Client.prototype.redirectUriAllowed = function allowed(uri) {
  if (redirectUriAllowed.call(this, uri)) return true;
  const u = URL.parse(uri);
  return this.clientAuthMethod === 'none' && u?.protocol === 'http:' && u.hostname === 'localhost';
};

// Access tokens are JWTs, as Dex's are: Dex signs the ID token's claims again with the client as
// audience (server/oauth2.go, newAccessToken), so APIs verify them with the JWKS alone.
// oidc-provider's own JWT format cannot be used: it needs a resource server as audience, keeps
// no record of the token, and such tokens are refused by userinfo. So each access token keeps
// its ordinary record (userinfo, introspection, revocation, revoking a grant), filed under the
// SHA-256 of its JWT: only the JWT itself finds it, and the record's id is no bearer token.
const tokenKey = (jwt) => createHash('sha256').update(jwt).digest('base64url');
let signingKeyObject; // made on first use: start-up stays as fast as before
const signJwt = (claims) => {
  signingKeyObject ??= createPrivateKey({ key: signingKey, format: 'jwk' });
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${part({ alg: 'RS256', kid: signingKey.kid })}.${part(claims)}`;
  return `${input}.${sign('sha256', Buffer.from(input), signingKeyObject).toString('base64url')}`;
};
const { AccessToken } = provider;
const opaqueValueAndPayload = AccessToken.prototype.getValueAndPayload;
AccessToken.prototype.getValueAndPayload = async function jwtValueAndPayload() {
  const { payload } = await opaqueValueAndPayload.call(this);
  const value = signJwt({ iss: provider.issuer, sub: payload.accountId, aud: payload.clientId,
    exp: payload.exp, iat: payload.iat, ...payload.extra });
  this.jti = payload.jti = tokenKey(value); // the id save() files the record under
  return { value, payload };
};
// oidc-provider's introspection and revocation refuse every JWT-shaped token (its own JWT format
// has no record to look up), so the HTTP server below passes ours on in this dotless spelling.
const JWT_ALIAS = 'jwt:';
const aliasOf = (jwt) => `${JWT_ALIAS}${jwt.replaceAll('.', ':')}`;
const findOpaque = AccessToken.find;
AccessToken.find = function findByJwt(value, ...rest) {
  const jwt = typeof value === 'string' && value.startsWith(JWT_ALIAS) ? value.slice(JWT_ALIAS.length).replaceAll(':', '.') : value;
  return findOpaque.call(this, typeof jwt === 'string' && jwt.split('.').length === 3 ? tokenKey(jwt) : undefined, ...rest);
};

// Resource-owner password grant (Dex: oauth2.passwordConnector: local).
if (passwordGrantEnabled) {
  provider.registerGrantType('password', async (ctx) => {
    const { client, params } = ctx.oidc;
    const user = await checkPassword(params.username, params.password);
    if (!user) {
      log('warn', `password grant: bad credentials for "${params.username}"`);
      throw new errors.InvalidGrant('invalid username or password');
    }
    const supported = new Set(['openid', 'offline_access', 'email', 'profile', 'groups']);
    const scope = (params.scope ?? 'openid').split(' ').filter((s) => supported.has(s)).join(' ');
    if (!scope.split(' ').includes('openid')) throw new errors.InvalidScope('the openid scope is required', 'openid');

    const grant = new provider.Grant({ accountId: user.sub, clientId: client.clientId });
    grant.addOIDCScope(scope);
    const grantId = await grant.save();
    const common = { accountId: user.sub, client, grantId, gty: 'password', scope };
    const at = new provider.AccessToken(common);
    const accessToken = await at.save();
    const refreshToken = scope.includes('offline_access')
      ? await new provider.RefreshToken({ ...common, rotations: 0, authTime: Math.floor(Date.now() / 1000) }).save()
      : undefined;
    const idToken = new provider.IdToken(await findAccount(ctx, user.sub).claims(), { ctx });
    Object.assign(idToken, { scope, mask: {}, rejected: [] });
    ctx.body = {
      access_token: accessToken, token_type: at.tokenType, expires_in: at.expiration,
      id_token: await idToken.issue({ use: 'idtoken' }), refresh_token: refreshToken, scope,
    };
  }, ['username', 'password', 'scope']);
}
provider.on('server_error', (ctx, err) => log('error', `${ctx.method} ${ctx.path}: ${err.stack}`));
provider.on('grant.success', (ctx) => log('info', `token issued: ${ctx.oidc.params.grant_type} client=${ctx.oidc.client.clientId}`));

// ---- login page (the interaction endpoints) --------------------------------
const loginPage = (uid, client, error = '', login = '') => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Log in</title>
<style>body{font-family:sans-serif;max-width:22em;margin:4em auto}input,button{display:block;width:100%;margin:.4em 0;padding:.5em;box-sizing:border-box}.err{color:#b00}</style>
</head><body><h2>Log in to ${html(client)}</h2>${error ? `<p class="err">${html(error)}</p>` : ''}
<form method="post" action="${prefix}/interaction/${html(uid)}/login">
<input name="login" placeholder="Email or username" autofocus value="${html(login)}" autocomplete="username">
<input name="password" type="password" placeholder="Password" autocomplete="current-password">
<button type="submit">Login</button></form></body></html>`;

const readBody = (req) => new Promise((resolve, reject) => {
  let body = '';
  req.on('data', (c) => { body += c; if (body.length > 65536) req.destroy(); });
  req.on('end', () => resolve(body));
  req.on('error', reject);
});
const readForm = async (req) => Object.fromEntries(new URLSearchParams(await readBody(req)));
const send = (res, status, type, body) => { res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' }); res.end(body); };

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch');
  const { prompt, params } = details;
  const client = (await provider.Client.find(params.client_id))?.clientName ?? params.client_id;
  if (prompt.name === 'consent') { // only reached with prompt=consent: approve automatically
    const grant = (details.grantId && await provider.Grant.find(details.grantId))
      || new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  }
  if (req.method === 'GET' && !action) return send(res, 200, 'text/html', loginPage(uid, client));
  if (req.method !== 'POST' || action !== '/login') return send(res, 405, 'text/plain', 'method not allowed');
  const form = await readForm(req);
  const user = await checkPassword(form.login, form.password);
  if (!user) {
    log('warn', `login failed for "${form.login}"`);
    return send(res, 401, 'text/html', loginPage(uid, client, 'Invalid email or password.', form.login));
  }
  log('info', `login ok: ${user.email}`);
  return provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
}

// Dex introspects its JWT access tokens; oidc-provider would refuse them (see aliasOf), so the
// body of an introspection or revocation request is read here and its token respelled.
async function aliasJwtToken(req) {
  const body = await readBody(req);
  if (!/^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] ?? '')) return body;
  const form = new URLSearchParams(body);
  const tokens = form.getAll('token');
  if (tokens.length !== 1 || tokens[0].split('.').length !== 3) return body;
  form.set('token', aliasOf(tokens[0]));
  return form.toString();
}

// ---- HTTP server -------------------------------------------------------------
const oidc = provider.callback();
const server = http.createServer(async (req, res) => {
  const started = Date.now();
  const { pathname, search } = new URL(req.url, 'http://x');
  res.on('finish', () => log('info', `${req.method} ${pathname} ${res.statusCode} ${Date.now() - started}ms`));
  if (pathname === '/healthz' || pathname === `${prefix}/healthz`) return send(res, 200, 'text/plain', 'ok');
  if (!pathname.startsWith(`${prefix}/`)) return send(res, 404, 'text/plain', 'not found');
  // Mount oidc-provider under the issuer path: it reads the prefix back from originalUrl.
  req.originalUrl = pathname + search;
  req.url = pathname.slice(prefix.length) + search;
  req.headers['x-forwarded-host'] = issuerUrl.host;
  req.headers['x-forwarded-proto'] = issuerUrl.protocol.slice(0, -1);
  const route = pathname.slice(prefix.length);
  if (req.method === 'POST' && (route === '/token/introspect' || route === '/token/revoke')) {
    // oidc-provider parses a body already read from req.body (it warns once that it does).
    req.body = Buffer.from(await aliasJwtToken(req).catch(() => ''));
  }
  const m = /^\/interaction\/([\w-]+)(\/login)?$/.exec(route);
  if (!m) return oidc(req, res);
  try {
    await interaction(req, res, m[1], m[2]);
  } catch (err) {
    log('warn', `interaction: ${err.message}`);
    if (!res.headersSent) send(res, err.statusCode ?? 500, 'text/plain', `${err.error ?? 'server_error'}: ${err.error_description ?? err.message}`);
  }
});

server.listen(port, args.host, () => {
  log('info', `dex stand-in listening on http://${args.host}:${port} issuer=${issuer} clients=${clients.length} users=${users.length} passwordGrant=${passwordGrantEnabled}`);
});

function shutdown(signal) {
  log('info', `${signal} received, shutting down`);
  setTimeout(() => process.exit(0), 3000).unref(); // force exit if connections linger
  server.close(() => writeQueue.finally(() => process.exit(0)));
  server.closeIdleConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
