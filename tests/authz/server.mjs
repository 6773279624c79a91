// A real OAuth 2.0 authorization server for the gateway's integration tests: node
// `oidc-provider` (the exact version is pinned in package.json / package-lock.json) on a free
// loopback port. Started and stopped by tests/common/authz.rs (`AuthServer`); usable by hand:
//
//   cd tests/authz && npm ci && node server.mjs        # prints {"issuer": "http://127.0.0.1:PORT", ...}
//
// What it serves (discovery at ISSUER/.well-known/openid-configuration):
// - `client_credentials` grant at ISSUER/token for the clients below (client_secret_basic
//   and client_secret_post);
// - access tokens per resource indicator (RFC 8707, `resource=`): opaque by default, JWT
//   (RS256, `typ: at+jwt`, signed with the key published at ISSUER/jwks) for resources whose
//   `format` is "jwt";
// - RFC 7662 introspection at ISSUER/token/introspection and RFC 7009 revocation at
//   ISSUER/token/revocation (oidc-provider refuses both for JWT-formatted access tokens);
// - DPoP-bound tokens (RFC 9449): send a `DPoP` proof to the token endpoint;
// - certificate-bound tokens (RFC 8705): for a client with
//   `tls_client_certificate_bound_access_tokens`, the client certificate is read from the
//   `x-client-cert` request header (URL-encoded PEM), as from a TLS-terminating proxy, since
//   this server listens in plain HTTP.
//
// Settings: environment variable AUTHZ_CONFIG, a JSON object overriding any of the defaults
// below (`clients`, `resources`, `access_token_ttl`, `host`). Output: one JSON line on stdout
// once listening; logs on stderr.

import crypto from 'node:crypto';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const SCOPES = 'read:studies write:studies admin:studies read:a write:b';

const defaults = {
  host: '127.0.0.1',
  access_token_ttl: 600,
  clients: [
    { client_id: 'app', client_secret: 'app-secret', token_endpoint_auth_method: 'client_secret_basic' },
    { client_id: 'app-post', client_secret: 'app-post-secret', token_endpoint_auth_method: 'client_secret_post' },
    // The gateway's own client, for introspection.
    { client_id: 'gateway', client_secret: 'gateway-secret', token_endpoint_auth_method: 'client_secret_basic' },
    { client_id: 'gateway-post', client_secret: 'gateway-post-secret', token_endpoint_auth_method: 'client_secret_post' },
    {
      client_id: 'app-mtls',
      client_secret: 'app-mtls-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      tls_client_certificate_bound_access_tokens: true,
    },
  ],
  // Resource indicator -> token format ("opaque" or "jwt") and scopes granted there. The
  // first one is the default resource.
  resources: {
    'https://api.wetrials.com': { format: 'opaque', scope: SCOPES },
    'https://jwt.api.wetrials.com': { format: 'jwt', scope: SCOPES },
  },
};

// A reader that went away must not kill the server at its next console.log.
process.stdout.on('error', () => {});

const settings = { ...defaults, ...JSON.parse(process.env.AUTHZ_CONFIG || '{}') };
const resourceNames = Object.keys(settings.resources);

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'authz-rs256', alg: 'RS256', use: 'sig' };

const server = http.createServer();
await new Promise((resolve) => { server.listen(0, settings.host, resolve); });
const { port } = server.address();
const issuer = `http://${settings.host}:${port}`;

const provider = new Provider(issuer, {
  clients: settings.clients.map((c) => ({
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: SCOPES,
    ...c,
  })),
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', ...SCOPES.split(' ')],
  ttl: { ClientCredentials: settings.access_token_ttl, AccessToken: settings.access_token_ttl },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    dPoP: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      getCertificate(ctx) {
        const pem = ctx.get('x-client-cert');
        return pem ? decodeURIComponent(pem) : undefined;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf || resourceNames[0],
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        const rs = settings.resources[resource];
        if (!rs) throw new errors.InvalidTarget();
        return {
          scope: rs.scope || SCOPES,
          audience: resource,
          accessTokenTTL: settings.access_token_ttl,
          accessTokenFormat: rs.format === 'jwt' ? 'jwt' : 'opaque',
          ...(rs.format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
        };
      },
    },
  },
});
provider.on('server_error', (_ctx, err) => { console.error('server_error', err); });

server.on('request', provider.callback());

const endpoints = {
  issuer,
  token_endpoint: `${issuer}/token`,
  introspection_endpoint: `${issuer}/token/introspection`,
  revocation_endpoint: `${issuer}/token/revocation`,
  jwks_uri: `${issuer}/jwks`,
  discovery_url: `${issuer}/.well-known/openid-configuration`,
};
process.stdout.write(`${JSON.stringify(endpoints)}\n`);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); process.exit(0); });
}
