"""Keyword and synonym tables the simulator reads customer text with.

``SYNONYMS`` maps a *label key* to phrases that are evidence for it. A label key is either a whole
enum value (``refund_request``) or one of its tokens (``refund``), so an enum the tables have never
seen (``shipping_problem``) still finds evidence through its tokens. Phrases are matched on
stemmed words (see ``analysis.stem``), so ``refunded`` matches ``refund`` and ``charged twice``
matches ``charge twice``.
"""

from __future__ import annotations


def _phrases(text: str) -> tuple[str, ...]:
    """The phrases of ``"a | b | c"``, in order: a table reads a key a line, not a phrase a line."""
    return tuple(phrase.strip() for phrase in text.split("|"))


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


SYNONYMS: dict[str, tuple[str, ...]] = {
    # Intent taxonomy.
    "order_status": _phrases(
        "where is my order | order status | status of my order | track my order | tracking number"
        " | tracking | has my order shipped | when will my order | update on my order"
        " | estado de mi pedido | suivi de commande"
    ),
    "refund_request": _phrases(
        "refund | money back | reimburse | reimbursement | get my money | return my money"
        " | reembolso | remboursement | rückerstattung | geld zurück | rimborso"
    ),
    "return_exchange": _phrases(
        "return | exchange | swap | wrong size | send it back | replacement | does not fit"
        " | doesn't fit | devolución | cambiar | umtausch | retour"
    ),
    "billing_issue": _phrases(
        "bill | billing | invoice | charged twice | double charged | overcharged | charge | payment"
        " | receipt | subscription fee | factura | facture | rechnung"
    ),
    "cancellation": _phrases(
        "cancel | cancellation | unsubscribe | terminate | close my account | stop my subscription"
        " | end my subscription | cancelar | annuler | kündigen"
    ),
    "technical_support": _phrases(
        "error | bug | crash | not working | does not work | doesn't work | broken | app | website"
        " | install | glitch | won't load | freezes | error message"
    ),
    "account_access": _phrases(
        "log in | login | sign in | password | locked out | reset my password | two-factor | 2fa"
        " | verification code | can't access my account | cannot access my account"
    ),
    "shipping_delay": _phrases(
        "late | delayed | delay | hasn't arrived | has not arrived | not arrived | still waiting"
        " | package | parcel | delivery | shipping | shipment | courier | lost in transit"
        " | never arrived | no ha llegado | pas arrivé | pas encore arrivé | nicht angekommen"
        " | não chegou | non è arrivato | retraso | retard | verspätung | ritardo"
    ),
    "product_question": _phrases(
        "does it | is it compatible | compatible | specification | specs | which model | in stock"
        " | available in | how do i use | question about | warranty | dimensions"
    ),
    "complaint": _phrases(
        "complain | complaint | terrible | awful | worst | unacceptable | disappointed | rude"
        " | poor service | horrible | queja | plainte | beschwerde"
    ),
    "fraud_report": _phrases(
        "fraud | fraudulent | someone used my card | used my card | unauthorized | unauthorised"
        " | stolen | hacked | scam | didn't make this purchase | did not make this purchase"
        " | not me | identity theft | phishing | suspicious transaction | fraude | betrug"
    ),
    "feedback": _phrases(
        "feedback | suggestion | love your | great service | thank you | thanks | compliment"
        " | recommend | would be nice | keep up"
    ),
    # Critic verdicts (evidence found in the customer text or the draft).
    "escalate": _phrases("lawyer | attorney | lawsuit | fraud | legal action | speak to a human"),
    "revise": _phrases("unclear | incorrect | missing"),
    "approve": _phrases("thank you for contacting | happy to help"),
    # Critic problem kinds (evidence found in the draft).
    "policy": _phrases("policy | terms | not allowed | exception"),
    "pii_exposure": _phrases(
        "card number | phone number | email address | social security | address"
    ),
    "tone": _phrases("calm down | obviously | as i said | your fault | not our problem"),
    "unsupported_claim": _phrases(
        "guarantee | promise | definitely | certainly will | 100% | always"
    ),
    # Escalation teams.
    "billing": _phrases(
        "bill | billing | invoice | charge | payment | refund | money back | overcharged"
    ),
    "logistics": _phrases(
        "shipping | delivery | package | parcel | tracking | courier | late | delayed | return"
        " | warehouse | where is my order"
    ),
    "technical": _phrases("error | bug | crash | app | website | not working | broken | glitch"),
    "account_security": _phrases(
        "fraud | hacked | unauthorized | unauthorised | password | locked out | stolen | suspicious"
        " | used my card | identity theft"
    ),
    "customer_care": _phrases(
        "complaint | rude | disappointed | feedback | cancel | unhappy | terrible service"
    ),
    "legal": _phrases(
        "lawyer | attorney | sue | lawsuit | legal action | court | solicitor | small claims"
        " | ombudsman | regulator"
    ),
    # Tokens that unseen enum values are made of.
    "refund": _phrases("refund | money back | reimburse"),
    "return": _phrases("return | send it back"),
    "exchange": _phrases("exchange | swap | replacement"),
    "shipping": _phrases("shipping | delivery | package | parcel | courier | late | delayed"),
    "delivery": _phrases("delivery | package | parcel | courier | arrived"),
    "delay": _phrases("late | delayed | delay | still waiting"),
    "payment": _phrases("payment | charge | card | paid"),
    "cancel": _phrases("cancel | unsubscribe | terminate"),
    "account": _phrases("account | login | log in | password | sign in"),
    "password": _phrases("password | reset | locked out"),
    "security": _phrases("fraud | hacked | unauthorized | stolen | suspicious"),
    "fraud": _phrases("fraud | unauthorized | stolen | scam | used my card"),
    "product": _phrases("product | item | model | compatible | size | colour | color"),
    "angry": _phrases("angry | furious | outraged | unacceptable | ridiculous"),
    "positive": _phrases("thank | great | love | happy | excellent"),
    "negative": _phrases("terrible | awful | angry | disappointed | unacceptable | worst"),
    "neutral": _phrases("question | wondering | information"),
}

GENERIC_TOKENS = _word_set(
    "account care claim customer general issue item kind order problem question report request "
    "service status support type"
)
"""Tokens of enum values that say little on their own (``refund_request`` -> ``request``)."""

FALLBACK_VALUES = _phrases(
    "other | unknown | general | none | misc | miscellaneous | neutral | customer_care | support"
)
"""Enum values chosen when no value has any evidence."""

ANGER = _phrases(
    "angry | furious | outraged | ridiculous | unacceptable | worst | terrible | awful | disgusting"
    " | fed up | sick of | incompetent | useless | hate | pathetic | livid | joke | scam | wtf"
    " | damn"
)
LEGAL = _phrases(
    "lawyer | attorney | sue | suing | lawsuit | legal action | court | solicitor | small claims"
    " | consumer protection | ombudsman | regulator | report you | abogado | demanda | avocat"
    " | anwalt"
)
FRAUD = _phrases(
    "fraud | fraudulent | unauthorized | unauthorised | someone used my card | used my card"
    " | stolen | hacked | identity theft | didn't make this purchase | did not make this purchase"
    " | phishing"
)
REPEATED = _phrases(
    "again and again | happened again | yet again | once again | third time | second time"
    " | fourth time | still not | still haven't | still have not | multiple times | several times"
    " | many times | keep getting | repeatedly | every time | already contacted | segunda vez"
    " | otra vez | encore une fois | schon wieder | already called | already emailed | for weeks"
    " | nobody has | no one has"
)
HUMAN_REQUEST = _phrases(
    "human | real person | speak to someone | talk to someone | speak to a person"
    " | talk to a person | manager | supervisor | representative | call me | live agent"
)
URGENCY = _phrases(
    "urgent | asap | as soon as possible | immediately | right now | right away | emergency"
)

SEVERITY_SCALE: dict[str, int] = {
    word: level
    for level, words in enumerate(
        (
            "lowest low minor trivial p3",
            "normal medium moderate standard default p2",
            "high major important p1",
            "urgent critical severe highest emergency p0",
        )
    )
    for word in words.split()
}
"""Ordinal words, so a priority-like enum maps to the text's severity whatever its values."""

LANGUAGE_STOPWORDS: dict[str, frozenset[str]] = {
    "en": _word_set("the and is my you to of it for not was have with this that are i"),
    "es": _word_set("el la los las de que y en un una mi por para con no es pedido está"),
    "fr": _word_set("le la les de des et est un une mon ma pour pas je vous avec commande"),
    "de": _word_set("der die das und ist ich nicht mein meine ein eine mit für bestellung zu"),
    "pt": _word_set("o a os as de que e em um uma meu minha para com não é pedido"),
    "it": _word_set("il lo la gli le di che e è un una mio mia per con non ordine"),
    "nl": _word_set("de het een en is ik niet mijn van voor met bestelling dat"),
}

LANGUAGE_CODES = frozenset(
    {"en", "es", "fr", "de", "pt", "it", "nl", "ja", "zh", "ko", "ru", "ar", "pl", "sv", "tr"}
)

PRODUCT_NOUNS = _word_set(
    "backpack blender book cable camera chair charger console desk dress earbuds headphones jacket "
    "jeans keyboard lamp laptop mattress monitor mouse phone printer router shirt shoes sneakers "
    "speaker subscription tablet television tv vacuum watch"
)

INTENT_TOPICS: dict[str, str] = {
    "order_status": "the status of your order",
    "refund_request": "your refund request",
    "return_exchange": "your return or exchange",
    "billing_issue": "the billing issue on your account",
    "cancellation": "your cancellation request",
    "technical_support": "the technical problem you ran into",
    "account_access": "your trouble accessing your account",
    "shipping_delay": "the delay with your delivery",
    "product_question": "your question about the product",
    "complaint": "your experience with us",
    "fraud_report": "the unauthorized activity you reported",
    "feedback": "your feedback",
    "other": "your message",
}

INTENT_ACTIONS: dict[str, tuple[str, ...]] = {
    "order_status": (
        "I have checked the order and it is being prepared for dispatch; you will get a "
        "tracking link by email as soon as it ships.",
        "Your order is in our fulfilment queue, and the tracking details will follow by email.",
    ),
    "refund_request": (
        "I have passed the refund to our billing team for review, and you will receive an "
        "email confirmation once it is processed.",
        "Our billing team will review the refund and confirm the outcome by email.",
    ),
    "return_exchange": (
        "I have started the return, and a prepaid return label will be emailed to you shortly.",
        "You can send the item back with the return label we will email to you.",
    ),
    "billing_issue": (
        "I have asked our billing team to review the charges and correct anything that is wrong.",
        "Our billing team will review the charge and follow up with you by email.",
    ),
    "cancellation": (
        "I have recorded your cancellation request, and you will receive a confirmation email.",
        "Your cancellation is being processed, and we will confirm it by email.",
    ),
    "technical_support": (
        "Please try signing out and back in; if the problem continues, our technical team "
        "will look into it with the details you sent.",
        "I have shared the details with our technical team so they can investigate.",
    ),
    "account_access": (
        "You can reset your password from the sign-in page, and I have flagged your account "
        "so our team can help if that does not work.",
        "I have asked our account team to help you regain access safely.",
    ),
    "shipping_delay": (
        "I have asked our logistics team to check with the carrier, and we will update you "
        "with a new delivery estimate.",
        "Our logistics team is contacting the carrier to find out where the parcel is.",
    ),
    "product_question": (
        "I have included the product details our team has on record, and we are happy to "
        "answer any follow-up questions.",
        "Our product team will confirm the details for you.",
    ),
    "complaint": (
        "I have shared your comments with the team responsible so that we can put this right.",
        "Your comments have been passed to the team responsible for reviewing them.",
    ),
    "fraud_report": (
        "I have flagged this to our account security team, who will secure your account and "
        "review the transactions with you.",
        "Our account security team will review the transactions and contact you directly.",
    ),
    "feedback": (
        "I have shared your feedback with the team, and we appreciate you taking the time.",
        "Your feedback has been passed on to the team.",
    ),
    "other": (
        "I have passed your message to the right team, and we will follow up shortly.",
        "The right team will look into this and get back to you.",
    ),
}
