"""Guard any function with secondkey: it runs once, only after an allow or a
reviewer's approval, and its result lands in the gateway's signed log.

    SECONDKEY_URL=http://127.0.0.1:8750 SECONDKEY_TOKEN=<agent token> python guard_quickstart.py
"""

import secondkey

client = secondkey.Client()  # SECONDKEY_URL, SECONDKEY_TOKEN


@client.guarded("write", resource="crm://customers/refunds", justification="customer asked for a refund")
def refund(customer: str, amount_cents: int) -> str:
    return f"refunded {amount_cents} cents to {customer}"


if __name__ == "__main__":
    try:
        print(refund("cus_42", 1500))  # waits here until a reviewer decides
    except secondkey.Denied as e:
        print(f"not run: {e}")
