"""Writes the fictitious support-ticket data sets of this folder.

  python examples/support_tickets/make_tickets.py

Deterministic (a fixed seed, templated sentences): running it again rewrites
the same bytes. Every customer id, order number, product and sentence is
made up; there is no real personal data.

  tickets.jsonl      {"customer_id", "prompt", "response"}: the customer's
                     message and the agent's reply (instruction tuning).
  ticket_topics.csv  customer_id,text,label: the message and its topic
                     (billing / shipping / technical; classification).

Customers file a skewed (Zipf-like) number of tickets: customer i of 40
files about 70 / i, so a few customers hold many records. That is the case
user-level DP is for: with `data.user_field='customer_id'` the privacy unit
is a customer, not a ticket.
"""

from __future__ import annotations

import csv
import json
import pathlib
import random

SEED = 20261203
N_CUSTOMERS = 40
TOP = 70  # tickets of the most active customer; customer i files TOP / i

PRODUCTS = ('Aurora desk lamp', 'Nimbus kettle', 'Pico router',
            'Vela headphones', 'Orbit smart plug', 'Tern backpack',
            'Quill e-reader', 'Basalt frying pan')
OPENERS = ('Hi,', 'Hello,', 'Good morning,', 'Hi there,', '')
CLOSERS = ('Thanks.', 'Thank you in advance.', 'Please help.', 'Regards.', '')

PROMPTS = {
    'billing': (
        'I was charged twice for order {order} ({product}). Can you refund '
        'the second payment of {amount}?',
        'My invoice for order {order} shows {amount}, but the {product} was '
        'on sale. Why the difference?',
        'The card payment for my {product} failed, but my bank shows '
        '{amount} taken. What happened to order {order}?',
        'I returned the {product} from order {order} on {date}. When will '
        'the refund of {amount} arrive?',
        'Can I get a VAT invoice for order {order}? The total was {amount}.',
        'A subscription fee of {amount} appeared on {date}, but I never '
        'signed up for anything.',
    ),
    'shipping': (
        'Order {order} ({product}) was due on {date} and has not arrived. '
        'Where is it?',
        'The tracking for order {order} has not moved since {date}.',
        'My {product} arrived with a broken box and a dent. Order {order}.',
        'Can I change the delivery address of order {order} before it '
        'ships?',
        'I received the {other} instead of the {product} I ordered (order '
        '{order}).',
        'The courier left order {order} at the wrong door on {date}.',
    ),
    'technical': (
        'My {product} will not turn on after the update on {date}.',
        'The {product} keeps disconnecting from Wi-Fi every few minutes.',
        'How do I reset the {product} to factory settings?',
        'The app says my {product} is offline, but its light is green.',
        'After charging overnight the {product} battery still shows 10%.',
        'The {product} makes a clicking noise when it starts. Is that '
        'normal?',
    ),
}

RESPONSES = {
    'billing': (
        'Sorry about the double charge on order {order}. I have refunded '
        '{amount} to your card; it shows within 5 working days.',
        'The sale price applied at checkout only; I have credited the '
        'difference for order {order} to your account.',
        'The failed payment is a hold, not a charge: your bank releases the '
        '{amount} within 3 days. Order {order} is paid by the retry.',
        'Your return of order {order} was received. The refund of {amount} '
        'was sent today and takes up to 5 working days.',
        'I have emailed you the VAT invoice for order {order}. Reply here if '
        'it needs a company name.',
        'That fee was a mistake on our side. I cancelled it and refunded '
        '{amount}.',
    ),
    'shipping': (
        'Order {order} is delayed at the depot. It is now due in 2 days; I '
        'have waived the delivery fee.',
        'I asked the courier to trace order {order}. If it does not move in '
        '48 hours we will send a new {product} free.',
        'Sorry the {product} arrived damaged. A replacement for order '
        '{order} ships today; no need to return the first one.',
        'Yes: I have updated the address of order {order}. It ships '
        'tomorrow.',
        'Apologies for the mix-up. The {product} for order {order} ships '
        'today with a return label for the {other}.',
        'I have reported the delivery of order {order} to the courier and '
        'opened a claim; you will hear back within 24 hours.',
    ),
    'technical': (
        'Please hold the power button of the {product} for 15 seconds to '
        'finish the update. If it stays off, we will replace it.',
        'Move the {product} closer to the router and turn off power saving '
        'in the app. That fixes most drops.',
        'Hold the reset button of the {product} for 10 seconds until the '
        'light blinks. It then restarts with factory settings.',
        'Sign out of the app and back in; the {product} status refreshes. '
        'If not, restart the {product}.',
        'The battery needs a full cycle after the first charge. If it still '
        'shows 10%, we will send a new {product}.',
        'A soft click at start is the {product} self-test and is normal. A '
        'loud or repeated click is not: send us a video.',
    ),
}


def make_tickets(seed: int = SEED) -> list[dict[str, str]]:
  """The tickets, each {'customer_id', 'prompt', 'response', 'topic'}."""
  rng = random.Random(seed)
  tickets = []
  for i in range(1, N_CUSTOMERS + 1):
    customer = f'cust-{rng.randrange(10000, 99999)}'
    for _ in range(max(1, round(TOP / i))):
      topic = rng.choice(sorted(PROMPTS))
      k = rng.randrange(len(PROMPTS[topic]))
      product, other = rng.sample(PRODUCTS, 2)
      slots = {'order': f'A{rng.randrange(100000, 999999)}',
               'product': product, 'other': other,
               'amount': f'{rng.randrange(500, 25000) / 100:.2f} EUR',
               'date': f'{rng.randrange(1, 29)} '
                       f'{rng.choice(("March", "April", "May", "June"))}'}
      opener, closer = rng.choice(OPENERS), rng.choice(CLOSERS)
      prompt = ' '.join(x for x in (PROMPTS[topic][k].format(**slots),
                                    closer) if x)
      prompt = f'{opener}\n{prompt}' if opener else prompt
      response = RESPONSES[topic][k].format(**slots)
      tickets.append({'customer_id': customer, 'prompt': prompt,
                      'response': response, 'topic': topic})
  # Interleave customers as a ticket queue would (public, seeded order).
  rng.shuffle(tickets)
  return tickets


def main() -> None:
  here = pathlib.Path(__file__).resolve().parent
  tickets = make_tickets()
  with open(here / 'tickets.jsonl', 'w', encoding='utf-8') as f:
    for t in tickets:
      f.write(json.dumps({k: t[k] for k in ('customer_id', 'prompt',
                                            'response')}) + '\n')
  with open(here / 'ticket_topics.csv', 'w', encoding='utf-8',
            newline='') as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(['customer_id', 'text', 'label'])
    for t in tickets:
      w.writerow([t['customer_id'], t['prompt'], t['topic']])
  print(f'{len(tickets)} tickets from {N_CUSTOMERS} customers -> {here}')


if __name__ == '__main__':
  main()
