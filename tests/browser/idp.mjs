// A real OpenID Provider for the browser tests: panva's certified node-oidc-provider on loopback.
//
//   node idp.mjs --viewer http://127.0.0.1:PORT [--audience framecdn] [--user reader-a=a ...]
//
// One public client, `ohif` (no secret, PKCE required, authorization code only), whose
// redirect URI is OHIF's /callback on the viewer's origin; CORS on the token endpoint is
// allowed for that origin (the provider's default `clientBasedCORS`: a public client's
// redirect URI origins). OHIF sends no `resource` parameter, so every authorization is for
// one resource server, framecdn: its access tokens are RS256 JWTs (RFC 9068) with `aud` =
// the audience and the account's `site` claim. The RS256 key is made at start; the JWKS is
// at the provider's jwks_uri. Logins go through the provider's development interactions
// (a form that takes any login; the password is not checked). Each `--user login=site`
// names a site; other logins get no site claim.
//
// When ready it prints one JSON line, {"issuer": ...}, on stdout; it stops on SIGTERM.
// (oidc-provider 9 asks for Node 22 and warns on stderr under Node 20; it runs there.)
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const CLIENT_ID = 'ohif';
const RESOURCE = 'urn:framecdn:dicomweb';

const { values } = parseArgs({
  options: {
    viewer: { type: 'string' },
    audience: { type: 'string', default: 'framecdn' },
    user: { type: 'string', multiple: true, default: [] },
  },
});
if (!values.viewer) throw new Error('--viewer <origin> is required');
const sites = new Map(values.user.map((pair) => pair.split('=', 2)));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      token_endpoint_auth_method: 'none',
      application_type: 'web',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: [`${values.viewer}/callback`],
      post_logout_redirect_uris: [`${values.viewer}/`],
    },
  ],
  jwks: { keys: [signingKey] },
  pkce: { required: () => true },
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  extraTokenClaims: (ctx, token) => {
    const site = sites.get(token.accountId);
    return site === undefined ? undefined : { site };
  },
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      // The code's resource is used at the token endpoint even though `openid` was asked.
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== RESOURCE) throw new Provider.errors.InvalidTarget();
        return {
          scope: 'dicomweb',
          audience: values.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

server.on('request', provider.callback());
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.stdout.write(JSON.stringify({ issuer }) + '\n');
