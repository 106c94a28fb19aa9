// Guard any function with secondkey: it runs once, only after an allow or a
// reviewer's approval, and its result lands in the gateway's signed log.
//   SECONDKEY_URL=http://127.0.0.1:8750 SECONDKEY_TOKEN=<agent token> node guard-quickstart.mjs
import { Client, Denied } from 'secondkey';

const client = new Client(); // SECONDKEY_URL, SECONDKEY_TOKEN

const refund = client.guarded(
  { operation: 'write', resource: 'crm://customers/refunds', justification: 'customer asked for a refund' },
  async ({ customer, amountCents }) => `refunded ${amountCents} cents to ${customer}`,
);

try {
  console.log(await refund({ customer: 'cus_42', amountCents: 1500 })); // waits for the decision
} catch (e) {
  if (!(e instanceof Denied)) throw e;
  console.log(`not run: ${e.message}`);
}
