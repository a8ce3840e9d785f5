#!/usr/bin/env node
// Compile JobRegistry.sol offline with solc-js and write the artifact that
// ships inside the Python package (gfl/chain/artifacts/JobRegistry.json).
//
//   node build.js           regenerate the artifact
//   node build.js --check   exit 1 if the committed artifact differs from a fresh build
//
// The output is deterministic: fixed settings, sorted keys, no timestamps.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const SOURCE = 'JobRegistry.sol';
const CONTRACT = 'JobRegistry';
const ARTIFACT = path.join(__dirname, '..', 'gfl', 'chain', 'artifacts', 'JobRegistry.json');
const SETTINGS = {
  evmVersion: 'prague', // the fork eth-tester 0.14 / py-evm 0.12 run by default
  viaIR: true, // the IR pipeline optimizes across the hot path's internal calls (~1% gas, smaller code)
  optimizer: { enabled: true, runs: 1000 },
  metadata: { bytecodeHash: 'none' },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]));
  }
  return value;
}

function build() {
  const source = fs.readFileSync(path.join(__dirname, SOURCE), 'utf8');
  const input = { language: 'Solidity', sources: { [SOURCE]: { content: source } }, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + '\n');
  if (errors.length) process.exit(2);
  const c = output.contracts[SOURCE][CONTRACT];
  const artifact = {
    contractName: CONTRACT,
    abi: c.abi,
    bytecode: '0x' + c.evm.bytecode.object,
    deployedBytecode: '0x' + c.evm.deployedBytecode.object,
    compiler: { name: 'solc-js', version: solc.version() },
    settings: { evmVersion: SETTINGS.evmVersion, viaIR: SETTINGS.viaIR, optimizer: SETTINGS.optimizer, metadata: SETTINGS.metadata },
    source: SOURCE,
    sourceSha256: crypto.createHash('sha256').update(source, 'utf8').digest('hex'),
  };
  return JSON.stringify(sortKeys(artifact), null, 1) + '\n';
}

const fresh = build();
if (process.argv.includes('--check')) {
  const committed = fs.existsSync(ARTIFACT) ? fs.readFileSync(ARTIFACT, 'utf8') : '';
  if (committed !== fresh) {
    process.stderr.write(`${path.relative(process.cwd(), ARTIFACT)} is stale: run \`npm run build\` in contracts/\n`);
    process.exit(1);
  }
  process.stdout.write('artifact up to date\n');
} else {
  fs.mkdirSync(path.dirname(ARTIFACT), { recursive: true });
  fs.writeFileSync(ARTIFACT, fresh);
  process.stdout.write(`wrote ${path.relative(process.cwd(), ARTIFACT)}\n`);
}
