// Builds the demo into demo/dist/ (index.html, app.js, style.css): the files the node embeds.
// `--check`: build into a temporary folder and fail if demo/dist differs (a stale commit).
import { build } from 'esbuild';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes('--check');
const dist = join(here, 'dist');
const out = check ? await mkdtemp(join(tmpdir(), 'roomcast-demo-')) : dist;
const files = ['index.html', 'app.js', 'style.css'];

if (!check) await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(here, 'src/app.ts')],
  outfile: join(out, 'app.js'),
  bundle: true,
  format: 'esm',
  target: ['es2020'],
  minify: true,
  legalComments: 'none',
  logLevel: 'warning',
});
await copyFile(join(here, 'index.html'), join(out, 'index.html'));
await copyFile(join(here, 'style.css'), join(out, 'style.css'));

if (check) {
  const stale = [];
  for (const f of files) {
    const a = await readFile(join(out, f));
    const b = await readFile(join(dist, f)).catch(() => Buffer.alloc(0));
    if (!a.equals(b)) stale.push(f);
  }
  await rm(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`demo/dist is stale (${stale.join(', ')}): run npm run build:demo and commit demo/dist`);
    process.exit(1);
  }
  console.log('demo/dist is up to date');
} else {
  console.log('demo built into demo/dist/ (index.html, app.js, style.css)');
}
