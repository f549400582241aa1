#!/usr/bin/env node
// Copies the ABI and bytecode the Rust side compiles against from forge's `out/` into the
// committed `artifacts/`. With `--check` it changes nothing and fails when they differ, so CI
// catches a contract change whose artifacts were not re-exported.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const contracts = ['SessionKeyValidator', 'TestUSDC'];
const check = process.argv.includes('--check');

let stale = [];
for (const name of contracts) {
  const built = JSON.parse(fs.readFileSync(path.join(root, 'out', `${name}.sol`, `${name}.json`), 'utf8'));
  const artifact = {
    contractName: name,
    abi: built.abi,
    bytecode: built.bytecode.object,
    deployedBytecode: built.deployedBytecode.object,
  };
  const text = JSON.stringify(artifact, null, 2) + '\n';
  const target = path.join(root, 'artifacts', `${name}.json`);
  const current = fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : '';
  if (current === text) continue;
  if (check) stale.push(path.relative(process.cwd(), target));
  else fs.writeFileSync(target, text);
}
if (stale.length) {
  console.error(`stale contract artifacts: ${stale.join(', ')}\nrun: npm --prefix contracts run export-artifacts, and commit the result`);
  process.exit(1);
}
console.log(check ? 'contract artifacts are up to date' : `exported ${contracts.length} artifacts to contracts/artifacts/`);
