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
// Every other setting is OHIF's default (config/default.js of OHIF 3.13).
window.config = {
  name: 'framecdn',
  routerBasename: null,
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
