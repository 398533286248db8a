// Upload one file to a tus endpoint with the real tus-js-client, as a browser or
// Node app would. Usage: node upload.js <endpoint> <file> [json options]
// Prints {"url": ...} on success; exits 1 with the error on failure.
'use strict';
const fs = require('fs');
const path = require('path');
const tus = require('tus-js-client');

const [endpoint, file, rawOptions] = process.argv.slice(2);
const extra = rawOptions ? JSON.parse(rawOptions) : {};
const data = fs.readFileSync(file);

const upload = new tus.Upload(data, {
  endpoint,
  metadata: { filename: path.basename(file), filetype: 'application/octet-stream' },
  retryDelays: [0, 200, 500],
  ...extra,
  onError(error) {
    console.error(String(error));
    process.exit(1);
  },
  onSuccess() {
    console.log(JSON.stringify({ url: upload.url }));
  },
});
upload.start();
