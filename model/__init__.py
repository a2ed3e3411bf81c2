"""affectstream.model: apply the method — aligned classifier, uniformity loss, rationales, captioners, deployed weights.

No Kafka, no Redis here.
"""
