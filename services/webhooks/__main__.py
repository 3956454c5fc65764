from services.common.service import main
from services.webhooks.service import setup

if __name__ == "__main__":
    main("webhooks", setup)
