// bull-board (`@bull-board/api` + `@bull-board/express`) over a queue this worker processes, read in headless
// Chromium (Debian's, driven by playwright-core): what a person sees. Input (stdin, JSON):
//   { redisUrl, prefix?, queue, chromium, pages: [{path, steps?: [{click: name} | {waitFor: text}], screenshot?}] }
// Output (stdout, JSON): { pages: [{path, text}] }
import { createBullBoard } from "@bull-board/api";
import { BullMQAdapter } from "@bull-board/api/bullMQAdapter";
import { ExpressAdapter } from "@bull-board/express";
import { Queue } from "bullmq";
import express from "express";
import IORedis from "ioredis";
import { chromium } from "playwright-core";
import { readInput } from "./db.mjs";

const input = await readInput();
const connection = new IORedis(input.redisUrl, { maxRetriesPerRequest: null });
const queue = new Queue(input.queue, { connection, prefix: input.prefix ?? "bull" });
const serverAdapter = new ExpressAdapter();
serverAdapter.setBasePath("/board");
createBullBoard({ queues: [new BullMQAdapter(queue)], serverAdapter });
const app = express();
app.use("/board", serverAdapter.getRouter());
const server = await new Promise((resolve) => {
  const listening = app.listen(0, "127.0.0.1", () => resolve(listening));
});
const base = `http://127.0.0.1:${server.address().port}/board`;

const browser = await chromium.launch({ executablePath: input.chromium, args: ["--no-sandbox"] });
const pages = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  for (const wanted of input.pages) {
    await page.goto(`${base}${wanted.path}`, { waitUntil: "networkidle" });
    for (const step of wanted.steps ?? []) {
      if (step.click) {
        const control = page.getByRole("button", { name: step.click }).or(page.getByRole("tab", { name: step.click }));
        await control.first().click();
      } else {
        await page.getByText(step.waitFor, { exact: false }).first().waitFor({ timeout: 20000 });
      }
    }
    pages.push({ path: wanted.path, text: await page.locator("body").innerText() });
    if (wanted.screenshot) await page.screenshot({ path: wanted.screenshot, animations: "disabled" });
  }
} finally {
  await browser.close();
  server.close();
  await queue.close();
  await connection.quit();
}
process.stdout.write(JSON.stringify({ pages }));
