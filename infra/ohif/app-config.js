/** @type {AppTypes.Config} */

// OHIF 3.13 in the framecdn stack (compose.yaml): one DICOMweb data source, framecdn.
//
// The shipped nginx serves this file at the viewer's /app-config.js (see
// infra/nginx/viewer.conf.template), so the viewer image itself is used unchanged.
// qidoRoot, wadoRoot and wadoUriRoot are the URL a *browser* uses for nginx's DICOMweb
// root: FRAMECDN_PUBLIC_URL followed by FRAMECDN_ROOT_PATH. Change all three together
// when you publish nginx under another name or port (docs/deployment.md, "The viewer").
// Searches (QIDO-RS), metadata, frames and everything else go to that one root: framecdn
// answers from its bucket and passes the rest to the PACS (FRAMECDN_UPSTREAM_URL).
// Login (`oidc`): framecdn checks a bearer token on every request (compose turns access
// control on), so OHIF signs the reader in at the Keycloak realm of the stack
// (infra/keycloak/framecdn-realm.json), which the viewer's nginx serves under this same
// origin at /auth: `authority` is the realm's public URL, exactly the tokens' `iss` (the
// origin's FRAMECDN_AUTH_ISSUER). With `response_type: 'code'` OHIF 3.13 uses the code
// flow with PKCE (S256) and renews the 5-minute access token with the refresh token.
// The redirect and logout paths are relative: OHIF prefixes the viewer's own origin;
// the realm's `ohif` client allows exactly those URLs. Change `authority` together with
// the roots below when the viewer is published elsewhere (VIEWER_PUBLIC_URL).
// Every other setting is OHIF's default (config/default.js of OHIF 3.13).
window.config = {
  name: 'framecdn',
  routerBasename: null,
  oidc: [
    {
      authority: 'http://localhost:3000/auth/realms/framecdn',
      client_id: 'ohif',
      redirect_uri: '/callback',
      response_type: 'code',
      scope: 'openid',
      post_logout_redirect_uri: '/',
    },
  ],
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: true,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  experimentalStudyBrowserSort: false,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  allowMultiSelectExport: false,
  maxNumRequests: {
    interaction: 100,
    thumbnail: 5,
    prefetch: 25,
  },
  showErrorDetails: 'always',
  defaultDataSourceName: 'framecdn',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'framecdn',
      configuration: {
        friendlyName: 'framecdn',
        name: 'framecdn',
        qidoRoot: 'http://localhost:8080/dicom-web',
        wadoRoot: 'http://localhost:8080/dicom-web',
        wadoUriRoot: 'http://localhost:8080/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        // Thumbnails from frames: framecdn serves them from the bucket.
        thumbnailRendering: 'wadors',
        thumbnailRequestStrategy: 'fetch',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: true,
        singlepart: 'bulkdata,video',
        bulkDataURI: {
          enabled: true,
          relativeResolution: 'studies',
        },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
