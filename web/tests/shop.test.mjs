// The shop in a real browser: headless Chromium (the system's, driven by playwright-core) against
// a running `bookstore up` at BOOKSTORE_URL, whose admin password is BOOKSTORE_ADMIN_PASSWORD.
// A customer registers, signs in, searches, opens a book, fills the cart and checks out with a
// double click (one order); staff, in another browser context, see the order arrive in the live
// queue, move it to the top and ship it, and the customer's page turns SHIPPED by itself; an
// admin promotes a customer to staff; axe-core finds no serious accessibility violation on any
// page; the storefront's first load stays under its size budget. Screenshots of every page go to
// SCREENSHOTS_DIR (default ./screenshots), and the first load's numbers are printed.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import { chromium } from 'playwright-core';

const base = process.env.BOOKSTORE_URL;
assert.ok(base, 'BOOKSTORE_URL: the shop to test');
const shots = process.env.SCREENSHOTS_DIR ?? 'screenshots';
const axeSource = await readFile(new URL('../node_modules/axe-core/axe.min.js', import.meta.url), 'utf8');
// Kilobytes the storefront's first load (page and stylesheet, compressed) may take.
const FIRST_LOAD_BUDGET_KB = 100;

let browser;
before(async () => {
  await mkdir(shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
});
after(async () => browser?.close());

/** A page in a fresh browser context (its own cookies), at a phone's width when asked. */
async function fresh({ phone = false } = {}) {
  const context = await browser.newContext(phone ? { viewport: { width: 375, height: 740 } } : {});
  const page = await context.newPage();
  const refused = [];
  // The pages' Content-Security-Policy must never have to refuse anything of ours.
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) refused.push(m.text()); });
  page.refusedByCsp = refused;
  return page;
}

/** Runs axe-core on `page` (injected over the debugging protocol, which the CSP does not
 *  govern) and fails on any serious or critical violation; screenshots the page as `name`. */
async function check(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] }));
  const serious = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(
    serious.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`),
    [],
    `accessibility of ${name}`,
  );
  assert.deepEqual(page.refusedByCsp, [], `CSP refusals on ${name}`);
}

/** Bytes of `path` as sent with `accept-encoding: br, gzip` (undecoded). */
function compressedBytes(path) {
  return new Promise((resolve, reject) => {
    http.get(new URL(path, base), { headers: { 'accept-encoding': 'br, gzip' } }, (res) => {
      let bytes = 0;
      res.on('data', (chunk) => { bytes += chunk.length; });
      res.on('end', () => resolve(bytes));
    }).on('error', reject);
  });
}

test('the storefront loads small and fast, and reads well at a phone\'s width', async () => {
  const page = await fresh();
  await page.goto(`${base}/`);
  const sheet = await page.getAttribute('link[rel=stylesheet]', 'href');
  const kb = ((await compressedBytes('/')) + (await compressedBytes(sheet))) / 1024;
  const lcp = await page.evaluate(() => new Promise((resolve) => {
    new PerformanceObserver((list) => {
      const entries = list.getEntries();
      resolve(entries[entries.length - 1].startTime);
    }).observe({ type: 'largest-contentful-paint', buffered: true });
  }));
  console.log(`first load: ${kb.toFixed(1)} KB compressed; largest contentful paint ${lcp.toFixed(0)} ms`);
  assert.ok(kb < FIRST_LOAD_BUDGET_KB, `first load ${kb.toFixed(1)} KB`);
  assert.equal(await page.locator('h1').textContent(), 'Catalog');
  await check(page, 'catalog');

  const phone = await fresh({ phone: true });
  await phone.goto(`${base}/`);
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling at 375 px (${overflow} px over)`);
  await check(phone, 'catalog-phone');
  await phone.context().close();
  await page.context().close();
});

const PASSWORD = 'amber kettle orchard violin';
let customers = 0;

/** Registers a new customer through the pages and signs them in; their username. */
async function registerAndSignIn(page, { screenshots = false } = {}) {
  customers += 1;
  const name = `browser${Date.now()}x${customers}`;
  await page.goto(`${base}/register`);
  if (screenshots) await check(page, 'register');
  await page.getByLabel('Username').fill(name);
  await page.getByLabel('Email').fill(`${name}@example.com`);
  await page.getByLabel('Full name').fill('Browser Tester');
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Register' }).click();
  await page.waitForURL(/\/signin\?registered=1$/);
  if (screenshots) await check(page, 'sign-in');
  await signIn(page, name, PASSWORD);
  return name;
}

async function signIn(page, name, password) {
  if (!page.url().includes('/signin')) await page.goto(`${base}/signin`);
  await page.getByLabel('Username or email').fill(name);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(`${base}/`);
  assert.equal(await page.getByRole('button', { name: 'Sign out' }).count(), 1);
}

/** Puts the catalog's first book in the cart and checks out; the order page's path. */
async function buyTheFirstBook(page) {
  await page.goto(`${base}/`);
  await page.locator('.books h2 a').first().click();
  await page.getByRole('button', { name: 'Add to cart' }).click();
  await page.goto(`${base}/checkout`);
  await page.getByLabel('Full name').fill('Browser Tester');
  await page.getByLabel('Address', { exact: true }).fill('4 Queue Street');
  await page.getByRole('button', { name: 'Place order' }).click();
  await page.waitForURL(/\/orders\/[0-9a-f-]+$/);
  return new URL(page.url()).pathname;
}

test('a customer searches, opens a book, fills the cart and checks out once with a double click', async () => {
  const page = await fresh();
  await registerAndSignIn(page, { screenshots: true });

  // Search by a word of a book's title, then open it.
  const firstTitle = await page.locator('.books h2 a').first().textContent();
  const word = firstTitle.split(/\s+/).sort((a, b) => b.length - a.length)[0];
  await page.getByLabel('Search by title, author or description').fill(word);
  await page.keyboard.press('Enter');
  await page.waitForURL(/\?q=/);
  await check(page, 'search');
  await page.getByRole('link', { name: firstTitle, exact: true }).first().click();
  await page.waitForURL(/\/books\//);
  assert.equal(await page.locator('h1').textContent(), firstTitle);
  await check(page, 'book');
  await page.getByLabel('Quantity').fill('2');
  await page.getByRole('button', { name: 'Add to cart' }).click();
  await page.waitForURL(/\/cart$/);
  await check(page, 'cart');
  await page.getByRole('link', { name: 'Check out' }).click();
  await page.waitForURL(/\/checkout$/);
  await page.getByLabel('Full name').fill('Browser Tester');
  await page.getByLabel('Address', { exact: true }).fill('3 Chromium Lane');
  await page.getByLabel(/^City/).fill('Testville');
  await page.getByLabel(/^Country/).fill('DE');
  await check(page, 'checkout');
  await page.getByRole('button', { name: 'Place order' }).dblclick();
  await page.waitForURL(/\/orders\/[0-9a-f-]+$/);
  assert.match(await page.locator('.status').first().textContent(), /PLACED/);
  await check(page, 'order');

  await page.goto(`${base}/orders`);
  assert.equal(await page.locator('tbody tr').count(), 1, 'a double click places one order');
  await check(page, 'my-orders');
  await page.goto(`${base}/books/no-such-book`);
  await check(page, 'not-found');
  await page.context().close();
});

test('staff see an order arrive live, move it to the top and ship it; the customer sees SHIPPED', async () => {
  const staff = await fresh();
  await signIn(staff, 'admin', process.env.BOOKSTORE_ADMIN_PASSWORD);
  await staff.goto(`${base}/staff/queue`);
  await staff.locator('#queue-status', { hasText: /^Live/ }).waitFor();
  const customer = await fresh();
  await registerAndSignIn(customer);
  // Something in the queue before it, so that "to the top" moves it.
  await buyTheFirstBook(customer);
  const orderPath = await buyTheFirstBook(customer);
  const order = `Order ${orderPath.split('/').pop().slice(-8)}`;

  // It arrives without a reload, last in line; staff drag it to the top, move it down a place
  // from the keyboard, and back to the top with a click.
  const task = staff.locator('li.task', { hasText: order });
  await task.waitFor();
  const first = staff.locator('li.task').first();
  const second = staff.locator('li.task').nth(1);
  await task.dragTo(first);
  await first.filter({ hasText: order }).waitFor();
  await staff.getByRole('button', { name: `Move down: ${order}` }).focus();
  await staff.keyboard.press('Enter');
  await second.filter({ hasText: order }).waitFor();
  await staff.getByRole('button', { name: `Move to top: ${order}` }).click();
  await first.filter({ hasText: order }).waitFor();
  await check(staff, 'staff-queue');
  // Claimed from the keyboard, then packed and shipped.
  await staff.getByRole('button', { name: `Claim ${order}` }).focus();
  await staff.keyboard.press('Enter');
  await task.locator('.state', { hasText: 'PICKING' }).waitFor();
  await staff.getByRole('button', { name: `Mark packed: ${order}` }).click();
  await task.locator('.state', { hasText: 'PACKED' }).waitFor();
  await staff.getByRole('button', { name: `Mark shipped: ${order}` }).click();
  await task.waitFor({ state: 'detached' });

  // The customer's order page, open all along, says so by itself.
  await customer.locator('.status', { hasText: 'SHIPPED' }).waitFor({ timeout: 15000 });
  await staff.context().close();
  await customer.context().close();
});

test('an admin promotes a customer to staff, who then sees the staff pages', async () => {
  const customer = await fresh();
  const name = await registerAndSignIn(customer);
  const refused = await customer.goto(`${base}/staff/queue`);
  assert.equal(refused.status(), 403);
  assert.equal(await customer.getByRole('link', { name: 'Queue' }).count(), 0);

  const admin = await fresh();
  await signIn(admin, 'admin', process.env.BOOKSTORE_ADMIN_PASSWORD);
  await admin.goto(`${base}/admin/users`);
  await check(admin, 'admin-users');
  await admin.getByLabel(`Role of ${name}`).selectOption('staff');
  await admin.getByLabel(`Role of ${name}`).locator('xpath=..').getByRole('button', { name: 'Set' }).click();
  await admin.waitForURL(/\/admin\/users$/);
  assert.equal(await admin.getByLabel(`Role of ${name}`).inputValue(), 'staff');
  await admin.goto(`${base}/admin/service-accounts`);
  await check(admin, 'admin-service-accounts');
  await admin.goto(`${base}/staff/books/new`);
  await check(admin, 'staff-new-book');
  await admin.goto(`${base}/`);
  await admin.locator('.books h2 a').first().click();
  await check(admin, 'book-as-staff');
  await admin.getByRole('link', { name: 'Edit this book' }).click();
  await check(admin, 'staff-edit-book');

  // A role comes with the next sign-in (a change of roles ends the account's sessions).
  await signIn(customer, name, PASSWORD);
  await customer.getByRole('link', { name: 'Queue' }).click();
  await customer.locator('#queue-status', { hasText: /^Live/ }).waitFor();
  assert.equal(await customer.locator('h1').textContent(), 'Fulfillment queue');
  await admin.context().close();
  await customer.context().close();
});
